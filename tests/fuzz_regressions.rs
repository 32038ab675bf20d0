//! The fuzz targets of `shardgate::fuzzing` in the ordinary test suite: each
//! runs over its seed corpus (`tests/fuzz/corpus/<target>/`), over every
//! input the fuzzer once crashed on (`tests/fuzz/regressions/<target>/`),
//! and over a few thousand deterministic mutations of the seeds. A target
//! panics on a broken invariant, so a failure names the input that broke it.

use shardgate::fuzzing::Rng;
use shardgate::fuzzing::{Target, TARGETS};
use std::path::{Path, PathBuf};

/// Mutated inputs run per target.
const MUTATIONS: usize = 3000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

/// The files of `dir`, sorted by name (none when it does not exist).
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect();
    out.sort();
    out
}

fn target(name: &str) -> Target {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target {name:?}"))
}

/// Runs `f` on `data`, naming `what` if it panics.
fn run(f: Target, data: &[u8], what: &dyn std::fmt::Display) {
    if std::panic::catch_unwind(|| f(data)).is_err() {
        panic!(
            "fuzz target failed on {what}: {:?}",
            String::from_utf8_lossy(data)
        );
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"/",
    b"//",
    b"%",
    b"%2F",
    b"%00",
    b"%2e%2e",
    b"..",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b"=",
    b"&",
    b"?",
    b"#",
    b"0",
    b"-1",
    b"18446744073709551616",
    b"ffffffffffffffff",
    b"\xff",
    b"\xc3\xa9",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Host: x\r\n",
];

/// One input derived from the seeds: bit flips, byte and token insertions,
/// deletions, splices of two seeds and duplicated lines.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds
        .get(rng.below(seeds.len()))
        .cloned()
        .unwrap_or_default();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => data.insert(at, rng.next_u64() as u8),
            2 => {
                let tok = INTERESTING[rng.below(INTERESTING.len())];
                data.splice(at..at, tok.iter().copied());
            }
            3 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            5 => {
                let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
                let dup = lines[rng.below(lines.len())].to_vec();
                let mut line = dup;
                line.push(b'\n');
                let start = data
                    .iter()
                    .take(at)
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                data.splice(start..start, line);
            }
            _ => data.truncate(at),
        }
    }
    data
}

fn exercise(name: &str) {
    let f = target(name);
    let dir = fuzz_dir();
    let corpus = files(&dir.join("corpus").join(name));
    assert!(!corpus.is_empty(), "no seed corpus for {name}");
    for (path, data) in corpus
        .iter()
        .chain(&files(&dir.join("regressions").join(name)))
    {
        run(f, data, &path.display());
    }
    let seeds: Vec<Vec<u8>> = corpus.into_iter().map(|(_, d)| d).collect();
    let mut rng = Rng::new(0x5EED_0000 ^ name.len() as u64 ^ (name.as_bytes()[0] as u64) << 32);
    for i in 0..MUTATIONS {
        let data = mutate(&mut rng, &seeds);
        run(f, &data, &format_args!("mutation {i} of {name}"));
    }
    // Plain random bytes too, for the paths seeds never reach.
    for i in 0..MUTATIONS / 10 {
        let len = rng.below(256);
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        run(f, &data, &format_args!("random input {i} of {name}"));
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                exercise(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_exercised() {
            let tested = [$(stringify!($name)),*];
            for (name, _) in TARGETS {
                assert!(tested.contains(name), "fuzz target {name} has no test here");
            }
        }
    };
}

targets!(
    request_head,
    response_head,
    chunked,
    router,
    path,
    config,
    jwt,
    template
);
