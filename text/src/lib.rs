//! Text: tokenizer, detokenizer, chat template.
#![deny(missing_docs)]
