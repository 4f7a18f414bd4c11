//! Pre-tokenization: cut text into pieces before BPE, so that a merge never joins the end of one word with
//! the start of the next. It is GPT-2's split, written as a hand-made scanner (no regex crate). GPT-2's
//! pattern, for reference:
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! In words: an English contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`, lower case only); else a run
//! of letters, of digits, or of other symbols, each optionally led by one space; else a run of whitespace,
//! except that a run followed by a non-space gives up its last character (so " world" keeps its space).
//! The classes are Rust's `char` properties: letter = `is_alphabetic` (Unicode Alphabetic, which also counts
//! letter-like combining marks such as Devanagari vowel signs, so they stay inside their word, where GPT-2's
//! `\p{L}` would cut them off), digit = `is_numeric` (`\p{N}`), whitespace = `is_whitespace` (`\s`).
//! Everything else (punctuation, symbols, emoji, NUL, other combining marks) is "other".
//! The pieces always join back to the input exactly.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Letter,
    Digit,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Digit
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// Byte length of the run of characters of class `k` at the start of `s`.
fn run_len(s: &str, k: Class) -> usize {
    s.char_indices().find(|&(_, c)| class(c) != k).map_or(s.len(), |(i, _)| i)
}

/// Byte length of a contraction (`'s`, `'re`, ...) at the start of `s`, if there is one.
fn contraction_len(s: &str) -> Option<usize> {
    let rest = s.strip_prefix('\'')?;
    if ["re", "ve", "ll"].iter().any(|p| rest.starts_with(p)) {
        Some(3)
    } else if ["s", "t", "m", "d"].iter().any(|p| rest.starts_with(p)) {
        Some(2)
    } else {
        None
    }
}

/// Byte length of the piece that starts `s` (`s` not empty).
fn piece_len(s: &str) -> usize {
    if let Some(n) = contraction_len(s) {
        return n;
    }
    let first = s.chars().next().expect("piece_len of an empty string");
    match class(first) {
        Class::Space => {
            let run = run_len(s, Class::Space);
            let Some(next) = s[run..].chars().next() else { return run }; // whitespace up to the end
            // the run is followed by a non-space character
            let last = s[..run].char_indices().next_back().map_or(0, |(i, _)| i);
            if last > 0 {
                last // `\s+(?!\S)`: leave the last whitespace character to lead the next piece
            } else if first == ' ' {
                run + run_len(&s[run..], class(next)) // ` ?\p{L}+` and friends: one space, then the run
            } else {
                run // a lone newline/tab before a word is a piece of its own
            }
        }
        k => run_len(s, k),
    }
}

/// The pieces of `text`, in order; they concatenate back to `text`.
pub fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / 4 + 1);
    for_each_piece(text, |p| out.push(p));
    out
}

/// Call `f` on each piece of `text`, in order (no allocation).
pub fn for_each_piece<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let mut i = 0;
    while i < text.len() {
        let n = piece_len(&text[i..]);
        f(&text[i..i + n]);
        i += n;
    }
}

/// The pieces of arbitrary bytes: each valid UTF-8 stretch is split as text; each invalid sequence (as
/// `String::from_utf8_lossy` would see it) is a piece of its own, so no merge crosses it.
pub fn for_each_byte_piece<'a>(bytes: &'a [u8], mut f: impl FnMut(&'a [u8])) {
    for chunk in bytes.utf8_chunks() {
        for_each_piece(chunk.valid(), |p| f(p.as_bytes()));
        if !chunk.invalid().is_empty() {
            f(chunk.invalid());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, want: &[&str]) {
        let got = pieces(text);
        assert_eq!(got, want, "split of {text:?}");
    }

    #[test]
    fn words_keep_their_leading_space() {
        check("Hello world", &["Hello", " world"]);
        check("First Citizen:\nBefore we proceed", &["First", " Citizen", ":", "\n", "Before", " we", " proceed"]);
    }

    #[test]
    fn contractions_digits_and_symbols() {
        check("I'll don't we've", &["I", "'ll", " don", "'t", " we", "'ve"]);
        check("It'S", &["It", "'", "S"]); // GPT-2's contractions are lower case only
        check("in 1984, 3.14!", &["in", " 1984", ",", " 3", ".", "14", "!"]);
        check("x!'s", &["x", "!'", "s"]); // a symbol run swallows the apostrophe, as the regex does
        check(" 's", &[" '", "s"]);
        check("a_b", &["a", "_", "b"]);
    }

    #[test]
    fn whitespace_runs() {
        // a run before a word gives its last space to the word; a run at the end stays whole
        check("a   b", &["a", "  ", " b"]);
        check("a \n b", &["a", " \n", " b"]);
        check("\n\nb", &["\n", "\n", "b"]);
        check("a\tb", &["a", "\t", "b"]);
        check("end  \n", &["end", "  \n"]);
        check("   ", &["   "]);
        check(" ", &[" "]);
        check("", &[]);
    }

    #[test]
    fn other_scripts_emoji_marks_and_nul() {
        check("naïve café", &["naïve", " café"]);
        check("Привет мир", &["Привет", " мир"]);
        check("日本語のテキスト", &["日本語のテキスト"]);
        check("hi 👋🏽!", &["hi", " 👋🏽!"]);
        check("a\0b", &["a", "\0", "b"]);
        // U+0301 COMBINING ACUTE is not Alphabetic: it is "other", as in GPT-2
        check("e\u{301}x", &["e", "\u{301}", "x"]);
        // U+093F DEVANAGARI VOWEL SIGN I is Alphabetic: it stays in its word (GPT-2 would cut it off)
        check("हिन्दी", &["हिन", "\u{94d}", "दी"]);
    }

    #[test]
    fn pieces_always_join_back_to_the_text() {
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let alphabet: Vec<char> = "ab Z9 \n\t'_.,!é日👋\u{301}\0\u{a0}".chars().collect();
        for _ in 0..2000 {
            let len = (next() % 24) as usize;
            let s: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let p = pieces(&s);
            assert_eq!(p.concat(), s, "pieces {p:?} do not join back to {s:?}");
            assert!(p.iter().all(|x| !x.is_empty()), "an empty piece in {p:?}");
        }
    }

    #[test]
    fn invalid_bytes_are_pieces_of_their_own() {
        let mut got: Vec<&[u8]> = Vec::new();
        for_each_byte_piece(b"ab\xffcd \xe2\x82", |p| got.push(p));
        let want: Vec<&[u8]> = vec![b"ab", b"\xff", b"cd", b" ", b"\xe2\x82"];
        assert_eq!(got, want);
    }
}
