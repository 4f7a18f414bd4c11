//! Text ⇄ token ids in Rust: the byte-level BPE tokenizer (training, encoding, decoding, files).
//! The character tokenizer stays in Python (`nanofrontier/tokenizer.py`): it is a dict lookup.
//!
//! - `pretokenize`  GPT-2's split of text into pieces (words with their leading space, digits, symbols,
//!   whitespace), hand-written: merges never cross a piece
//! - `bpe`          `Bpe`: train (pair counts on a heap, updated incrementally), encode (also batched, in
//!   parallel on the crate's pool), decode (bytes, or text with invalid UTF-8 replaced), save/load

pub mod pretokenize;
pub mod bpe;
