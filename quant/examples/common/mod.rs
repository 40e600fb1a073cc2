//! What the probes share: random quantized weights.

/// `rows × cols` values of random Q4_0 (`block_bytes` 18) or Q8_0 (34) blocks, each block's f16
/// scale fixed (0x2c in its high byte: about 0.06) so that products stay finite.
pub fn random_blocks(rows: usize, cols: usize, block_bytes: usize) -> Vec<u8> {
    let mut data = vec![0u8; rows * cols / 32 * block_bytes];
    let mut s = 1u64;
    for (i, b) in data.iter_mut().enumerate() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (s >> 33) as u8;
        if i % block_bytes == 1 {
            *b = 0x2c;
        }
    }
    data
}
