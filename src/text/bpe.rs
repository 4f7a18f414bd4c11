//! Byte-level BPE (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units"; the
//! byte-level form of GPT-2, Radford et al. 2019). Not a port of any library: tokens 0..256 are the raw bytes,
//! token 256 + r is merge r (its two parts joined), and special tokens come last.
//!
//! Training: text → pieces (`pretokenize`, so no merge crosses a piece) → distinct pieces with counts →
//! repeatedly merge the most frequent adjacent pair. Pair counts live in a map and a max-heap; after a merge
//! only the words that held the pair are rewritten, and only their pairs' counts change (no rescan of the
//! corpus). Heap entries go stale when a count drops; a popped entry whose count is out of date is pushed
//! back with the true count. Ties: the highest count wins, then the smallest (left id, right id), so training
//! is deterministic. A pair's count counts every adjacent position, so "aaa" holds (a, a) twice (the merge
//! itself goes left to right: "aaa" → [aa, a]).
//!
//! Encoding a piece applies the merges in the order they were learned; a min-heap of (merge index, position)
//! over a linked list of symbols does it in O(n log n) (`encode_piece_reference` is the plain definition the
//! tests compare against). Decoding joins the tokens' bytes; `decode` replaces invalid UTF-8 (a token
//! boundary inside a character) with U+FFFD, like Python's `bytes.decode("utf-8", "replace")`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write as _;
use std::path::Path;

use rayon::prelude::*;

use super::pretokenize;
use crate::error::{Error, Result};
use crate::parallel;

/// Tokens 0..256 are the bytes.
pub const N_BYTES: usize = 256;
/// Largest vocabulary we accept (ids are u32; this also bounds what a corrupt file can ask us to allocate).
pub const MAX_VOCAB: usize = 1 << 24;
/// A long text is encoded in parallel, this many pieces per task (a fixed size: the result never depends on
/// the thread count, and it is the same as encoding in one go).
const PIECES_PER_TASK: usize = 8192;
/// Pieces up to this many bytes are remembered while encoding one text (a word seen twice is encoded once).
const MAX_CACHED_PIECE: usize = 64;
/// `encode_batch` hands the pool tasks of this many texts (a fixed size, like `PIECES_PER_TASK`).
const TEXTS_PER_TASK: usize = 256;
/// A long stretch of text is cut into blocks of about this many bytes (see `block_cuts`), each
/// pre-tokenized and encoded by its own task.
const BLOCK_BYTES: usize = 1 << 16;

/// Multiply-rotate hasher (the FxHash idea) for pair keys and short pieces: SipHash is several times slower
/// here and we need no protection against adversarial keys.
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u8(&mut self, x: u8) {
        self.add(x as u64);
    }
    fn write_u32(&mut self, x: u32) {
        self.add(x as u64);
    }
    fn write_u64(&mut self, x: u64) {
        self.add(x);
    }
    fn write_usize(&mut self, x: usize) {
        self.add(x as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A pair of ids as one map key: left in the high half, so key order = (left, right) order.
#[inline]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

#[inline]
fn unkey(k: u64) -> (u32, u32) {
    ((k >> 32) as u32, k as u32)
}

/// Replace every (a, b) in `syms`, left to right, by `new` ("aaa" with (a, a) → [new, a]).
fn merge_in_place(syms: &mut Vec<u32>, a: u32, b: u32, new: u32) {
    let n = syms.len();
    let (mut r, mut w) = (0, 0);
    while r < n {
        if r + 1 < n && syms[r] == a && syms[r + 1] == b {
            syms[w] = new;
            r += 2;
        } else {
            syms[w] = syms[r];
            r += 1;
        }
        w += 1;
    }
    syms.truncate(w);
}

/// A stretch of text between special tokens, or the index of the special token found there.
enum Segment<'t> {
    Text(&'t str),
    Special(usize),
}

/// Cut `text` at every occurrence of one of `specials` (leftmost first; of two starting at the same place,
/// the longer), calling `f` on each segment in order. Each special's next occurrence is remembered, so
/// this is O(len(text) × number of specials).
fn split_specials<'t>(text: &'t str, specials: &[&str], mut f: impl FnMut(Segment<'t>)) {
    let mut next: Vec<Option<usize>> = specials.iter().map(|s| text.find(s)).collect();
    let mut pos = 0;
    loop {
        for (k, s) in specials.iter().enumerate() {
            if next[k].is_some_and(|p| p < pos) {
                next[k] = text[pos..].find(s).map(|q| q + pos);
            }
        }
        let best = (0..specials.len()).filter_map(|k| next[k].map(|p| (p, Reverse(specials[k].len()), k))).min();
        let Some((p, _, k)) = best else { break };
        if p > pos {
            f(Segment::Text(&text[pos..p]));
        }
        f(Segment::Special(k));
        pos = p + specials[k].len();
    }
    if pos < text.len() {
        f(Segment::Text(&text[pos..]));
    }
}

/// Byte offsets `[0, c1, c2, ..., len]` cutting `text` into blocks of at least `block` bytes (the last may
/// be shorter), each cut at a place where pre-tokenization starts afresh, so that the pieces of the blocks are
/// exactly the pieces of the whole: right after "X\n" and before "Y", X and Y printable ASCII. (X ends its
/// piece; a lone newline before a non-space is a piece of its own, at the end of a block too; Y starts one.)
fn block_cuts(text: &str, block: usize) -> Vec<usize> {
    let b = text.as_bytes();
    let mut cuts = vec![0];
    let mut from = block.max(2);
    while from < b.len() {
        let found =
            (from..b.len()).find(|&j| b[j - 1] == b'\n' && b[j].is_ascii_graphic() && b[j - 2].is_ascii_graphic());
        let Some(j) = found else { break };
        cuts.push(j);
        from = j + block;
    }
    cuts.push(b.len());
    cuts
}

/// Special tokens must be non-empty and distinct.
fn check_specials(op: &'static str, specials: &[String]) -> Result<()> {
    for (i, s) in specials.iter().enumerate() {
        if s.is_empty() {
            return Err(Error::value(op, "a special token cannot be the empty string"));
        }
        if specials[..i].contains(s) {
            return Err(Error::value(op, format!("special token {s:?} is given twice")));
        }
    }
    Ok(())
}

/// A distinct piece of the training text, as symbols, and how often it occurs.
struct Word {
    syms: Vec<u32>,
    count: u64,
}

/// Learn up to `n_merges` merges from `words` (fewer when no adjacent pair is left).
fn learn_merges(mut words: Vec<Word>, n_merges: usize) -> Result<Vec<(u32, u32)>> {
    // pair -> total count over all words, and pair -> the words that (may) hold it
    let mut count: FastMap<u64, u64> = FastMap::default();
    let mut holders: FastMap<u64, Vec<u32>> = FastMap::default();
    for (w, word) in words.iter().enumerate() {
        for p in word.syms.windows(2) {
            let k = key(p[0], p[1]);
            *count.entry(k).or_default() += word.count;
            let h = holders.entry(k).or_default();
            if h.last() != Some(&(w as u32)) {
                h.push(w as u32);
            }
        }
    }
    // max-heap on (count, then the smallest pair): Reverse(key) makes the smaller pair the larger entry
    let mut heap: BinaryHeap<(u64, Reverse<u64>)> = count.iter().map(|(&k, &c)| (c, Reverse(k))).collect();
    let mut merges = Vec::with_capacity(n_merges);
    let mut delta: FastMap<u64, i64> = FastMap::default();
    while merges.len() < n_merges {
        if merges.len() % 32 == 0 {
            parallel::check_interrupt()?;
        }
        let Some((c, Reverse(k))) = heap.pop() else { break };
        let now = count.get(&k).copied().unwrap_or(0);
        if now != c {
            // stale: the pair lost occurrences since this entry was pushed
            if now > 0 {
                heap.push((now, Reverse(k)));
            }
            continue;
        }
        let (a, b) = unkey(k);
        let new = (N_BYTES + merges.len()) as u32;
        merges.push((a, b));
        // rewrite only the words holding (a, b); their old pairs are subtracted and their new pairs added
        delta.clear();
        for w in holders.remove(&k).unwrap_or_default() {
            let word = &mut words[w as usize];
            if !word.syms.windows(2).any(|p| p[0] == a && p[1] == b) {
                continue; // it held the pair once, before an earlier merge took one of its halves
            }
            let n = word.count as i64;
            for p in word.syms.windows(2) {
                *delta.entry(key(p[0], p[1])).or_default() -= n;
            }
            merge_in_place(&mut word.syms, a, b, new);
            for p in word.syms.windows(2) {
                let pk = key(p[0], p[1]);
                *delta.entry(pk).or_default() += n;
                if p[0] == new || p[1] == new {
                    let h = holders.entry(pk).or_default();
                    if h.last() != Some(&w) {
                        h.push(w);
                    }
                }
            }
        }
        for (&pk, &d) in &delta {
            if d == 0 {
                continue;
            }
            let old = count.get(&pk).copied().unwrap_or(0) as i64;
            let now = old + d;
            debug_assert!(now >= 0, "pair count went negative");
            if now <= 0 {
                count.remove(&pk);
            } else {
                count.insert(pk, now as u64);
                // only pairs with the new token grow; each gets an up-to-date entry
                if d > 0 {
                    heap.push((now as u64, Reverse(pk)));
                }
            }
        }
        debug_assert!(!count.contains_key(&k), "the merged pair still has a count");
    }
    Ok(merges)
}

/// Pieces already encoded (piece -> (start, len) of its ids in `store`), and the buffers of `encode_piece`.
#[derive(Default)]
struct Memo<'p> {
    scratch: Scratch,
    cache: FastMap<&'p [u8], (u32, u32)>,
    store: Vec<u32>,
}

/// Reused buffers for encoding one piece.
#[derive(Default)]
struct Scratch {
    syms: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
}

const NONE: u32 = u32::MAX;

/// A trained byte-level BPE tokenizer: merges (token 256 + r = merge r) and special tokens after them.
#[derive(Clone, Debug)]
pub struct Bpe {
    merges: Vec<(u32, u32)>,
    /// pair → merge index
    ranks: FastMap<u64, u32>,
    /// the bytes of every token, specials included
    vocab: Vec<Vec<u8>>,
    /// special k has id 256 + merges.len() + k
    specials: Vec<String>,
}

impl PartialEq for Bpe {
    fn eq(&self, o: &Bpe) -> bool {
        self.merges == o.merges && self.specials == o.specials
    }
}

impl Bpe {
    /// Train on `text` to a vocabulary of `vocab_size` = 256 bytes + merges + `specials.len()`. Occurrences
    /// of the special tokens in `text` are cut out before counting (they never take part in a merge). If the
    /// text runs out of pairs first, the vocabulary is smaller: `vocab_size()` says what it is.
    pub fn train(text: &str, vocab_size: usize, specials: &[String]) -> Result<Bpe> {
        check_specials("BPE.train", specials)?;
        let min = N_BYTES + specials.len();
        if vocab_size < min {
            return Err(Error::value(
                "BPE.train",
                format!(
                    "vocab_size {vocab_size} is smaller than the 256 byte tokens + {} special tokens = {min}",
                    specials.len()
                ),
            ));
        }
        if vocab_size > MAX_VOCAB {
            return Err(Error::value("BPE.train", format!("vocab_size {vocab_size} is above the limit {MAX_VOCAB}")));
        }
        let names: Vec<&str> = specials.iter().map(String::as_str).collect();
        let mut counts: FastMap<&str, u64> = FastMap::default();
        split_specials(text, &names, |seg| {
            if let Segment::Text(t) = seg {
                pretokenize::for_each_piece(t, |p| {
                    if p.len() > 1 {
                        *counts.entry(p).or_default() += 1; // a one-byte piece has no pair
                    }
                })
            }
        });
        parallel::check_interrupt()?;
        let words: Vec<Word> =
            counts.into_iter().map(|(p, count)| Word { syms: p.bytes().map(u32::from).collect(), count }).collect();
        let merges = learn_merges(words, vocab_size - min)?;
        Bpe::from_merges(merges, specials.to_vec())
    }

    /// A tokenizer from its merges (merge r = (left id, right id) makes token 256 + r; each part must be
    /// an id that exists before it) and special tokens.
    pub fn from_merges(merges: Vec<(u32, u32)>, specials: Vec<String>) -> Result<Bpe> {
        const OP: &str = "BPE.from_merges";
        check_specials(OP, &specials)?;
        if N_BYTES + merges.len() + specials.len() > MAX_VOCAB {
            return Err(Error::value(OP, format!("a vocabulary above the limit {MAX_VOCAB}")));
        }
        let mut ranks = FastMap::default();
        let mut vocab: Vec<Vec<u8>> = (0..N_BYTES).map(|b| vec![b as u8]).collect();
        for (r, &(a, b)) in merges.iter().enumerate() {
            let limit = N_BYTES + r;
            if a as usize >= limit || b as usize >= limit {
                return Err(Error::value(
                    OP,
                    format!("merge {r} is ({a}, {b}), but only ids below {limit} exist before it"),
                ));
            }
            if ranks.insert(key(a, b), r as u32).is_some() {
                return Err(Error::value(OP, format!("merge {r} ({a}, {b}) repeats an earlier merge")));
            }
            let joined = [vocab[a as usize].as_slice(), vocab[b as usize].as_slice()].concat();
            vocab.push(joined);
        }
        vocab.extend(specials.iter().map(|s| s.as_bytes().to_vec()));
        Ok(Bpe { merges, ranks, vocab, specials })
    }

    /// 256 + merges + special tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The merges in the order they were learned: merge r made token 256 + r.
    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }

    /// The special tokens with their ids.
    pub fn special_tokens(&self) -> Vec<(String, u32)> {
        let first = N_BYTES + self.merges.len();
        self.specials.iter().enumerate().map(|(k, s)| (s.clone(), (first + k) as u32)).collect()
    }

    /// The id of special token `name`.
    pub fn special_id(&self, name: &str) -> Option<u32> {
        self.specials.iter().position(|s| s == name).map(|k| (N_BYTES + self.merges.len() + k) as u32)
    }

    /// The bytes of one token.
    pub fn token_bytes(&self, id: i64) -> Result<&[u8]> {
        self.check_id("BPE.token_bytes", id).map(|i| self.vocab[i].as_slice())
    }

    fn check_id(&self, op: &'static str, id: i64) -> Result<usize> {
        let n = self.vocab.len();
        if id < 0 || id as u64 >= n as u64 {
            return Err(Error::index(op, format!("id {id} is outside the vocabulary [0, {n})")));
        }
        Ok(id as usize)
    }

    // ---- encoding ----

    /// Encode `text`, every special token found in it becoming its one id.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let all: Vec<&str> = self.specials.iter().map(String::as_str).collect();
        self.encode_with(text, &all)
    }

    /// Encode `text` as plain text: special tokens' strings are split and merged like any other text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        self.encode_with(text, &[])
    }

    /// Encode `text`, only the special tokens named in `allowed` becoming one id each (an unknown name
    /// is an error).
    pub fn encode_allowing(&self, text: &str, allowed: &[String]) -> Result<Vec<u32>> {
        for a in allowed {
            if self.special_id(a).is_none() {
                return Err(Error::value(
                    "BPE.encode",
                    format!("{a:?} is not a special token of this tokenizer (it has {:?})", self.specials),
                ));
            }
        }
        let names: Vec<&str> = allowed.iter().map(String::as_str).collect();
        Ok(self.encode_with(text, &names))
    }

    fn encode_with(&self, text: &str, allowed: &[&str]) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, allowed, &mut Memo::default(), &mut out);
        out
    }

    /// Append the ids of `text` to `out`, remembering pieces in `memo` (shared by the texts of a batch task).
    fn encode_into<'p>(&self, text: &'p str, allowed: &[&str], memo: &mut Memo<'p>, out: &mut Vec<u32>) {
        let mut pieces = Vec::new();
        split_specials(text, allowed, |seg| match seg {
            Segment::Text(t) if t.len() > 2 * BLOCK_BYTES => self.encode_blocks(t, memo, out),
            Segment::Text(t) => {
                pieces.clear();
                pretokenize::for_each_piece(t, |p| pieces.push(p.as_bytes()));
                self.encode_pieces(&pieces, memo, out);
            }
            Segment::Special(k) => out.push(self.special_id(allowed[k]).expect("checked special")),
        });
    }

    /// A long text (no special tokens in it): blocks cut where pre-tokenization restarts, pre-tokenized and
    /// encoded in parallel. Without such places, one block: its pieces are still encoded in parallel.
    fn encode_blocks<'p>(&self, text: &'p str, memo: &mut Memo<'p>, out: &mut Vec<u32>) {
        let cuts = block_cuts(text, BLOCK_BYTES);
        if cuts.len() <= 2 {
            let mut pieces = Vec::with_capacity(text.len() / 4 + 1);
            pretokenize::for_each_piece(text, |p| pieces.push(p.as_bytes()));
            self.encode_pieces(&pieces, memo, out);
            return;
        }
        let parts: Vec<Vec<u32>> = parallel::install(|| {
            cuts.par_windows(2)
                .map(|w| {
                    let (mut v, mut memo) = (Vec::with_capacity((w[1] - w[0]) / 3 + 1), Memo::default());
                    pretokenize::for_each_piece(&text[w[0]..w[1]], |p| {
                        self.encode_memo(p.as_bytes(), &mut memo, &mut v)
                    });
                    v
                })
                .collect()
        });
        for p in parts {
            out.extend_from_slice(&p);
        }
    }

    /// Encode arbitrary bytes (not necessarily UTF-8) as ordinary text: `decode_bytes` gives them back.
    pub fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        let mut pieces = Vec::with_capacity(bytes.len() / 4 + 1);
        pretokenize::for_each_byte_piece(bytes, |p| pieces.push(p));
        let mut out = Vec::with_capacity(bytes.len() / 3 + 1);
        self.encode_pieces(&pieces, &mut Memo::default(), &mut out);
        out
    }

    /// Encode many texts in parallel on the crate's pool (each as `encode_allowing`), in tasks of
    /// `TEXTS_PER_TASK` texts that share one memo of encoded pieces.
    pub fn encode_batch(&self, texts: &[String], allowed: &[String]) -> Result<Vec<Vec<u32>>> {
        self.encode_allowing("", allowed)?; // the names are checked once, before any work
        let names: Vec<&str> = allowed.iter().map(String::as_str).collect();
        Ok(parallel::install(|| {
            texts
                .par_chunks(TEXTS_PER_TASK)
                .flat_map_iter(|chunk| {
                    let mut memo = Memo::default();
                    let names = &names;
                    chunk
                        .iter()
                        .map(|t| {
                            let mut out = Vec::with_capacity(t.len() / 3 + 1);
                            self.encode_into(t, names, &mut memo, &mut out);
                            out
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        }))
    }

    /// Encode a list of pieces; when it is long, in parallel tasks of `PIECES_PER_TASK` pieces (each with
    /// a memo of its own).
    fn encode_pieces<'p>(&self, pieces: &[&'p [u8]], memo: &mut Memo<'p>, out: &mut Vec<u32>) {
        if pieces.len() <= PIECES_PER_TASK {
            for &p in pieces {
                self.encode_memo(p, memo, out);
            }
            return;
        }
        let parts: Vec<Vec<u32>> = parallel::install(|| {
            pieces
                .par_chunks(PIECES_PER_TASK)
                .map(|c| {
                    let (mut v, mut memo) = (Vec::with_capacity(c.len() * 2), Memo::default());
                    for &p in c {
                        self.encode_memo(p, &mut memo, &mut v);
                    }
                    v
                })
                .collect()
        });
        for p in parts {
            out.extend_from_slice(&p);
        }
    }

    /// One piece, looked up in (or added to) the memo when it is short.
    #[inline]
    fn encode_memo<'p>(&self, p: &'p [u8], memo: &mut Memo<'p>, out: &mut Vec<u32>) {
        let Memo { scratch, cache, store } = memo;
        if p.len() == 1 {
            out.push(p[0] as u32);
        } else if p.len() > MAX_CACHED_PIECE {
            self.encode_piece(p, scratch, out);
        } else if let Some(&(s, n)) = cache.get(p) {
            out.extend_from_slice(&store[s as usize..(s + n) as usize]);
        } else {
            let s = store.len();
            self.encode_piece(p, scratch, store);
            cache.insert(p, (s as u32, (store.len() - s) as u32));
            out.extend_from_slice(&store[s..]);
        }
    }

    #[inline]
    fn rank(&self, a: u32, b: u32) -> Option<u32> {
        self.ranks.get(&key(a, b)).copied()
    }

    /// Apply the merges to one piece, in the order they were learned (leftmost first among equals), and
    /// append its ids to `out`. Symbols form a linked list (`next`/`prev`); the heap holds
    /// (merge index, left position) of each mergeable neighbour pair. An entry is stale when its position
    /// was swallowed or its pair changed; it is then skipped.
    fn encode_piece(&self, piece: &[u8], s: &mut Scratch, out: &mut Vec<u32>) {
        let n = piece.len();
        if n < 2 {
            out.extend(piece.iter().map(|&b| b as u32));
            return;
        }
        let Scratch { syms, next, prev, heap } = s;
        syms.clear();
        syms.extend(piece.iter().map(|&b| b as u32));
        next.clear();
        next.extend((1..=n as u32).map(|i| if i as usize == n { NONE } else { i }));
        prev.clear();
        prev.extend((0..n as u32).map(|i| i.wrapping_sub(1))); // 0 → NONE
        heap.clear();
        for i in 0..n - 1 {
            if let Some(r) = self.rank(syms[i], syms[i + 1]) {
                heap.push(Reverse((r, i as u32)));
            }
        }
        while let Some(Reverse((r, i))) = heap.pop() {
            let i = i as usize;
            let j = next[i];
            if syms[i] == NONE || j == NONE || self.rank(syms[i], syms[j as usize]) != Some(r) {
                continue;
            }
            // merge i with its right neighbour j; the new symbol's pairs can only have later merges
            let j = j as usize;
            syms[i] = (N_BYTES as u32) + r;
            syms[j] = NONE;
            let k = next[j];
            next[i] = k;
            if k != NONE {
                prev[k as usize] = i as u32;
                if let Some(r2) = self.rank(syms[i], syms[k as usize]) {
                    heap.push(Reverse((r2, i as u32)));
                }
            }
            let p = prev[i];
            if p != NONE {
                if let Some(r2) = self.rank(syms[p as usize], syms[i]) {
                    heap.push(Reverse((r2, p)));
                }
            }
        }
        let mut i = 0usize; // position 0 is never swallowed (only right neighbours are)
        loop {
            out.push(syms[i]);
            if next[i] == NONE {
                break;
            }
            i = next[i] as usize;
        }
    }

    /// The definition `encode_piece` must match: each merge in turn, over the whole piece.
    #[cfg(test)]
    fn encode_piece_reference(&self, piece: &[u8]) -> Vec<u32> {
        let mut syms: Vec<u32> = piece.iter().map(|&b| b as u32).collect();
        for (r, &(a, b)) in self.merges.iter().enumerate() {
            merge_in_place(&mut syms, a, b, (N_BYTES + r) as u32);
        }
        syms
    }

    // ---- decoding ----

    /// The bytes of a sequence of ids (any split of a UTF-8 character across ids is kept as is).
    pub fn decode_bytes(&self, ids: &[i64]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let i = self.check_id("BPE.decode", id)?;
            out.extend_from_slice(&self.vocab[i]);
        }
        Ok(out)
    }

    /// The text of a sequence of ids. Bytes that are not valid UTF-8 (ids that end or start inside a
    /// character) become U+FFFD, one per maximal invalid sequence, as Python's `errors="replace"` does.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    // ---- files ----

    /// Save as readable text (see `FORMAT`), atomically: `path` holds the old file or the whole new one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self.to_text();
        crate::io::write_atomic(path, |f| f.write_all(text.as_bytes()))
    }

    /// Load a file written by `save`. Anything malformed is an `Error::Io` naming the file and line.
    pub fn load(path: &Path) -> Result<Bpe> {
        let bytes = crate::io::read_file(path)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::Io(format!("{}: not a nanofrontier BPE file (not UTF-8 text)", path.display())))?;
        Bpe::from_text(text).map_err(|e| Error::Io(format!("{}: {e}", path.display())))
    }

    /// The file's contents.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(32 * self.vocab.len());
        let _ = writeln!(s, "{HEADER}");
        let _ = writeln!(s, "split gpt2");
        let _ = writeln!(s, "merges {}", self.merges.len());
        let _ = writeln!(s, "specials {}", self.specials.len());
        let _ = writeln!(s, "# {}", FORMAT.lines().collect::<Vec<_>>().join("\n# "));
        for (r, &(a, b)) in self.merges.iter().enumerate() {
            let id = N_BYTES + r;
            let _ = writeln!(s, "{a} {b}  # {id} \"{}\"", show_bytes(&self.vocab[id]));
        }
        for (name, id) in self.special_tokens() {
            let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(s, "special {id} {hex}  # \"{}\"", show_bytes(name.as_bytes()));
        }
        let _ = writeln!(s, "end");
        s
    }

    /// Parse `to_text`'s output (errors name the line).
    pub fn from_text(text: &str) -> Result<Bpe> {
        let bad = |line: usize, msg: String| Error::Io(format!("line {line}: {msg}"));
        // (line number, content without comment), skipping blank and comment-only lines
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.split('#').next().unwrap_or("").trim()))
            .filter(|(_, l)| !l.is_empty());
        let mut next_line = |what: &str| lines.next().ok_or_else(|| Error::Io(format!("truncated: {what} missing")));
        let (n, l) = next_line("the header")?;
        if l != HEADER {
            return Err(bad(n, format!("not a nanofrontier BPE file (first line {l:?}, expected {HEADER:?})")));
        }
        let (n, l) = next_line("the split line")?;
        if l != "split gpt2" {
            return Err(bad(n, format!("unknown pre-tokenization {l:?} (this version knows \"split gpt2\")")));
        }
        let mut count = |field: &str| -> Result<usize> {
            let (n, l) = next_line(field)?;
            let v = l
                .strip_prefix(field)
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| bad(n, format!("expected \"{field} <count>\", got {l:?}")))?;
            if v > MAX_VOCAB {
                return Err(bad(n, format!("{field} {v} is above the limit {MAX_VOCAB}")));
            }
            Ok(v)
        };
        let (n_merges, n_specials) = (count("merges")?, count("specials")?);
        let mut merges = Vec::new();
        for r in 0..n_merges {
            let (n, l) = next_line(&format!("merge {r} of {n_merges}"))?;
            let mut it = l.split_ascii_whitespace().map(|x| x.parse::<u32>());
            match (it.next(), it.next(), it.next()) {
                (Some(Ok(a)), Some(Ok(b)), None) => merges.push((a, b)),
                _ => return Err(bad(n, format!("expected a merge \"<left id> <right id>\", got {l:?}"))),
            }
        }
        let mut specials = Vec::new();
        for k in 0..n_specials {
            let want = N_BYTES + n_merges + k;
            let (n, l) = next_line(&format!("special token {k} of {n_specials}"))?;
            let parts: Vec<&str> = l.split_ascii_whitespace().collect();
            let parsed = match parts.as_slice() {
                ["special", id, hex] if id.parse::<usize>().ok() == Some(want) => unhex(hex),
                _ => None,
            };
            let bytes = parsed.ok_or_else(|| bad(n, format!("expected \"special {want} <hex bytes>\", got {l:?}")))?;
            let name =
                String::from_utf8(bytes).map_err(|_| bad(n, "a special token's bytes are not UTF-8".to_string()))?;
            specials.push(name);
        }
        match next_line("the \"end\" line")? {
            (_, "end") => {}
            (n, l) => return Err(bad(n, format!("expected \"end\", got {l:?}"))),
        }
        if let Some((n, l)) = lines.next() {
            return Err(bad(n, format!("unexpected content after \"end\": {l:?}")));
        }
        Bpe::from_merges(merges, specials).map_err(|e| Error::Io(format!("inconsistent contents: {e}")))
    }
}

const HEADER: &str = "nanofrontier-bpe 1";

/// The file format, also written into every file as a comment.
pub const FORMAT: &str = "\
nanofrontier byte-level BPE. Tokens 0-255 are the bytes. After the four header lines, each merge line
'<left id> <right id>' makes the next token (256, 257, ...) from two earlier ones; a 'special <id> <hex>'
line gives a special token's UTF-8 bytes in hex; 'end' closes the file. Text after '#' is a comment
(here: the new token's id and its bytes, shown with \\xNN for bytes that are not UTF-8).";

/// Bytes shown readably: UTF-8 as text with \\ \" \n \t \r and \u{..} escapes for controls, other bytes \xNN.
fn show_bytes(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                '\t' => s.push_str("\\t"),
                '\r' => s.push_str("\\r"),
                c if c.is_control() => {
                    let _ = write!(s, "\\u{{{:x}}}", c as u32);
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

fn unhex(h: &str) -> Option<Vec<u8>> {
    if h.is_empty() || h.len() % 2 != 0 || !h.is_ascii() {
        return None;
    }
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// xorshift64*: a seeded stream for the property tests
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A random string mixing ASCII words, whitespace runs, emoji, combining marks, NUL, other scripts
    /// and random code points (never a surrogate: `char` cannot hold one).
    fn random_text(rng: &mut Rng, len: usize) -> String {
        let pool = [
            "the",
            " cat",
            "'s",
            "  ",
            "\n",
            "\t\t",
            "\0",
            "é",
            "e\u{301}",
            "👋🏽",
            "👨‍👩‍👧",
            "日本",
            "Привет",
            "123",
            "!?",
            "\u{a0}",
            "\r\n",
            "\u{fffd}",
            "Ã(",
        ];
        let mut s = String::new();
        while s.chars().count() < len {
            if rng.below(3) == 0 {
                loop {
                    if let Some(c) = char::from_u32(rng.below(0x11_0000) as u32) {
                        s.push(c);
                        break;
                    }
                }
            } else {
                s.push_str(pool[rng.below(pool.len())]);
            }
        }
        s
    }

    const SAMPLE: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n\
        First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n\
        First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n";

    #[test]
    fn the_classic_example_merges_in_the_expected_order() {
        // "aaabdaaabac": (a, a) occurs 4 times (windows at 0, 1, 4, 5) -> token 256 = "aa"
        // then "ZabdZabac": (Z, a) and (a, b) both occur twice; the tie goes to the smaller pair (a, b) -> 257
        // then "ZYdZYac": (Z, Y) twice -> 258
        let bpe = Bpe::train("aaabdaaabac", 259, &[]).unwrap();
        let (a, b) = (b'a' as u32, b'b' as u32);
        assert_eq!(bpe.merges(), &[(a, a), (a, b), (256, 257)]);
        assert_eq!(bpe.token_bytes(258).unwrap(), b"aaab");
        assert_eq!(bpe.encode("aaabdaaabac"), vec![258, b'd' as u32, 258, a, b'c' as u32]);
    }

    #[test]
    fn merges_never_cross_a_piece_boundary() {
        let bpe = Bpe::train(SAMPLE, 400, &[]).unwrap();
        for text in [SAMPLE, "you are all resolved, Citizen? speak!"] {
            let mut piece_ends = std::collections::BTreeSet::new();
            let mut at = 0;
            for p in pretokenize::pieces(text) {
                at += p.len();
                piece_ends.insert(at);
            }
            let mut token_ends = std::collections::BTreeSet::new();
            let mut at = 0;
            for id in bpe.encode(text) {
                at += bpe.token_bytes(id as i64).unwrap().len();
                token_ends.insert(at);
            }
            let crossed: Vec<_> = piece_ends.difference(&token_ends).collect();
            assert!(crossed.is_empty(), "tokens run across piece ends at bytes {crossed:?}");
        }
    }

    #[test]
    fn heap_encoding_equals_the_plain_definition() {
        let mut rng = Rng(7);
        let train: String = (0..40).map(|_| random_text(&mut rng, 30)).collect::<Vec<_>>().join(" ");
        let bpe = Bpe::train(&format!("{SAMPLE}{train}{}", "aaaa bbbb aaaaaaa ".repeat(20)), 600, &[]).unwrap();
        assert!(bpe.merges().len() > 200, "only {} merges learned", bpe.merges().len());
        let mut scratch = Scratch::default();
        let mut pieces: Vec<Vec<u8>> = pretokenize::pieces(SAMPLE).iter().map(|p| p.as_bytes().to_vec()).collect();
        for _ in 0..300 {
            let len = 1 + rng.below(20);
            pieces.push(random_text(&mut rng, len).into_bytes());
        }
        pieces.extend([b"aaaaaaaaaaaaa".to_vec(), b"bbbbbbbbbaaaab".to_vec(), vec![b' '; 300]]);
        for p in pieces {
            let mut got = Vec::new();
            bpe.encode_piece(&p, &mut scratch, &mut got);
            let want = bpe.encode_piece_reference(&p);
            assert_eq!(got, want, "piece {:?}", String::from_utf8_lossy(&p));
        }
    }

    #[test]
    fn round_trip_is_exact_for_random_text() {
        let mut rng = Rng(42);
        let corpus: String = (0..50).map(|_| random_text(&mut rng, 40)).collect();
        let bpe = Bpe::train(&format!("{SAMPLE}{corpus}"), 500, &strings(&["<|endoftext|>"])).unwrap();
        for len in [0, 1, 2, 5, 17, 100, 400] {
            for _ in 0..30 {
                let text = random_text(&mut rng, len);
                let ids: Vec<i64> = bpe.encode(&text).into_iter().map(i64::from).collect();
                assert_eq!(bpe.decode_bytes(&ids).unwrap(), text.as_bytes(), "text {text:?}");
                assert_eq!(bpe.decode(&ids).unwrap(), text);
            }
        }
    }

    #[test]
    fn a_long_text_encodes_in_parallel_exactly_as_piece_by_piece() {
        let mut rng = Rng(3);
        let text: String = (0..3 * PIECES_PER_TASK / 4).map(|_| random_text(&mut rng, 6)).collect();
        let bpe = Bpe::train(&text, 700, &[]).unwrap();
        let pieces = pretokenize::pieces(&text);
        assert!(pieces.len() > 2 * PIECES_PER_TASK, "only {} pieces: the parallel path is not taken", pieces.len());
        let want: Vec<u32> = pieces.iter().flat_map(|p| bpe.encode_piece_reference(p.as_bytes())).collect();
        assert_eq!(bpe.encode(&text), want);
        let batch = bpe.encode_batch(&[text.clone(), String::new(), "x".into()], &[]).unwrap();
        assert_eq!(batch, vec![want, vec![], vec![b'x' as u32]]);
    }

    #[test]
    fn blocks_cut_where_the_pieces_of_the_whole_text_are_cut() {
        let mut rng = Rng(11);
        let text: String = (0..4000).map(|_| random_text(&mut rng, 5)).collect::<Vec<_>>().join("x\nY");
        let whole = pretokenize::pieces(&text);
        let cuts = block_cuts(&text, 500);
        assert!(cuts.len() > 20, "only {} cuts", cuts.len());
        let blocks: Vec<&str> = cuts.windows(2).flat_map(|w| pretokenize::pieces(&text[w[0]..w[1]])).collect();
        assert_eq!(blocks, whole);
        // and the encoder's block path gives the piece-by-piece result
        let long = text.repeat(2 * BLOCK_BYTES / text.len() + 2);
        let bpe = Bpe::train(&text, 600, &[]).unwrap();
        assert!(block_cuts(&long, BLOCK_BYTES).len() > 3);
        let want: Vec<u32> =
            pretokenize::pieces(&long).iter().flat_map(|p| bpe.encode_piece_reference(p.as_bytes())).collect();
        assert_eq!(bpe.encode(&long), want);
        assert_eq!(block_cuts("no newline here", 2), vec![0, 15]);
    }

    #[test]
    fn bytes_that_are_not_utf8_round_trip_and_decode_replaces_them() {
        let bpe = Bpe::train(SAMPLE, 300, &[]).unwrap();
        let raw = b"ok \xff\xfe caf\xc3 \xe2\x82\xac \xed\xa0\x80 end\x00";
        let ids: Vec<i64> = bpe.encode_bytes(raw).into_iter().map(i64::from).collect();
        assert_eq!(bpe.decode_bytes(&ids).unwrap(), raw);
        assert_eq!(bpe.decode(&ids).unwrap(), String::from_utf8_lossy(raw));
        // an id sequence that cuts "€" (3 bytes) after its first byte
        let euro: Vec<i64> = "€".bytes().map(i64::from).collect();
        assert_eq!(bpe.decode(&euro[..1]).unwrap(), "\u{fffd}");
        assert_eq!(bpe.decode(&euro).unwrap(), "€");
    }

    #[test]
    fn special_tokens_are_atomic_and_never_merged() {
        let eot = "<|endoftext|>";
        let text = format!("{SAMPLE}{eot}").repeat(5);
        let bpe = Bpe::train(&text, 300, &strings(&[eot, "<pad>"])).unwrap();
        assert_eq!(bpe.vocab_size(), 300);
        let eot_id = bpe.special_id(eot).unwrap();
        assert_eq!(eot_id, 298);
        assert_eq!(bpe.special_tokens(), vec![(eot.to_string(), 298), ("<pad>".to_string(), 299)]);
        // training never saw the special's text: no merged token contains "<|"
        assert!((256..298).all(|i| !bpe.token_bytes(i).unwrap().windows(2).any(|w| w == b"<|")));
        let ids = bpe.encode(&format!("hi{eot}{eot}<pad>x"));
        assert_eq!(ids[ids.len() - 4..], [eot_id, eot_id, 299, b'x' as u32]);
        // not allowed: the special's text is ordinary text
        let plain = bpe.encode_allowing(eot, &[]).unwrap();
        assert!(plain.len() > 1 && !plain.contains(&eot_id), "{plain:?}");
        let ids64: Vec<i64> = plain.iter().map(|&i| i as i64).collect();
        assert_eq!(bpe.decode(&ids64).unwrap(), eot);
        let only_pad = bpe.encode_allowing(&format!("{eot}<pad>"), &strings(&["<pad>"])).unwrap();
        assert_eq!(only_pad.last(), Some(&299));
        assert!(!only_pad.contains(&eot_id));
        let e = bpe.encode_allowing("x", &strings(&["<nope>"])).unwrap_err();
        assert!(e.to_string().contains("not a special token"), "{e}");
    }

    #[test]
    fn overlapping_specials_take_the_leftmost_then_the_longest() {
        let bpe = Bpe::from_merges(vec![], strings(&["ab", "abc", "bcd"])).unwrap();
        // at 0 both "ab" and "abc" start: the longer wins; "bcd" starts later and overlaps it: not taken
        assert_eq!(bpe.encode("abcd"), vec![257, b'd' as u32]);
        assert_eq!(bpe.encode("xbcdab"), vec![b'x' as u32, 258, 256]);
    }

    #[test]
    fn training_is_deterministic_and_stops_when_out_of_pairs() {
        let a = Bpe::train(SAMPLE, 450, &[]).unwrap();
        let b = Bpe::train(SAMPLE, 450, &[]).unwrap();
        assert_eq!(a.merges(), b.merges());
        let small = Bpe::train("ab ab", 1000, &[]).unwrap();
        // pieces "ab", " ab": (a, b) then (' ', ab); nothing left after that
        assert_eq!(small.merges(), &[(97, 98), (32, 256)]);
        assert_eq!(small.vocab_size(), 258);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let e = Bpe::train("x", 255, &[]).unwrap_err();
        assert!(matches!(&e, Error::Value { .. }) && e.to_string().contains("smaller than the 256"), "{e}");
        let e = Bpe::train("x", 257, &strings(&["<a>", "<b>"])).unwrap_err();
        assert!(e.to_string().contains("= 258"), "{e}");
        assert!(Bpe::train("x", 300, &strings(&[""])).is_err());
        assert!(Bpe::train("x", 300, &strings(&["<a>", "<a>"])).unwrap_err().to_string().contains("twice"));
        let bpe = Bpe::train(SAMPLE, 260, &[]).unwrap();
        for id in [260, -1, i64::MAX] {
            let e = bpe.decode(&[1, id]).unwrap_err();
            assert!(matches!(&e, Error::Index { .. }) && e.to_string().contains("[0, 260)"), "{e}");
        }
        assert!(Bpe::from_merges(vec![(256, 1)], vec![]).unwrap_err().to_string().contains("below 256"));
        assert!(Bpe::from_merges(vec![(1, 2), (1, 2)], vec![]).unwrap_err().to_string().contains("repeats"));
    }

    #[test]
    fn save_and_load_round_trip_and_corrupt_files_are_io_errors() {
        let dir = crate::io::temp_dir("bpe");
        let path = dir.join("tok.bpe");
        let bpe =
            Bpe::train(&format!("{SAMPLE} \"quoted\" # hash \\ back\t"), 350, &strings(&["<|eot|>", "é"])).unwrap();
        bpe.save(&path).unwrap();
        let back = Bpe::load(&path).unwrap();
        assert_eq!(back, bpe);
        assert_eq!(back.vocab_size(), 350);
        assert_eq!(back.encode(SAMPLE), bpe.encode(SAMPLE));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# 256 \""), "merge lines are not annotated:\n{}", &text[..400]);

        let lines: Vec<&str> = text.lines().collect();
        let first_merge = lines.iter().position(|l| l.starts_with(|c: char| c.is_ascii_digit())).unwrap();
        let with_line = |i: usize, new: &str| {
            let mut v = lines.clone();
            v[i] = new;
            v.join("\n")
        };
        let cases: Vec<(String, &str)> = vec![
            (lines[..lines.len() - 1].join("\n"), "truncated"), // no "end"
            (lines[..lines.len() / 2].join("\n"), "truncated"),
            (text.replacen("nanofrontier-bpe 1", "nanofrontier-bpe 9", 1), "not a nanofrontier BPE file"),
            (text.replacen("split gpt2", "split bytes", 1), "unknown pre-tokenization"),
            (with_line(first_merge, "101 x"), "expected a merge"),
            (with_line(first_merge, "101 32 7"), "expected a merge"),
            (with_line(2, "merges 99999999999999999999999"), "expected \"merges"),
            (with_line(2, "merges 99999999"), "above the limit"),
            (with_line(first_merge, "300 1"), "inconsistent contents"),
            (format!("{text}extra\n"), "after \"end\""),
            (String::new(), "truncated"),
        ];
        for (i, (contents, want)) in cases.iter().enumerate() {
            let p = dir.join(format!("bad{i}.bpe"));
            std::fs::write(&p, contents).unwrap();
            let e = Bpe::load(&p).unwrap_err();
            assert!(matches!(&e, Error::Io(m) if m.contains(want) && m.contains("bad")), "case {i}: {e}");
        }
        std::fs::write(dir.join("bin.bpe"), b"\xff\xfe\x00garbage").unwrap();
        assert!(Bpe::load(&dir.join("bin.bpe")).unwrap_err().to_string().contains("not UTF-8"));
        assert!(Bpe::load(&dir.join("missing.bpe")).unwrap_err().to_string().contains("no such file"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
