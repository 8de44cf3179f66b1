//! Replays reference trajectories and reports how far this crate is from them.
//!
//! ```text
//! cargo run --release --example replay -- [--out DIR] FILE...
//! ```
//!
//! Each FILE is a reference case in the format of `tests/data/golden/FORMAT.md` (CAME or AdamW,
//! chosen by its `source` and `config`). One line per file: the worst error as a fraction of the
//! tolerance (at most 1 passes) and `ok` or `FAIL`; then the count of files passed and the
//! instruction set of the kernels (`came::instruction_set`). The exit status is 1 if any file
//! fails.
//! With `--out DIR`, writes `DIR/NAME.json` with the parameters after each step and the final
//! state under the reference's names.
//!
//! A resume case (a file with `resume_after_step`) starts from the reference's checkpoint, the
//! `.safetensors` file of the same name beside it, and runs the steps after it; with `--out`
//! the optimizer's own checkpoint after the last step is written too, as
//! `DIR/NAME.safetensors` (convert it back to PyTorch with `scripts/convert_checkpoint.py`).

#[path = "../tests/suite/support/golden.rs"]
mod golden;

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: replay [--out DIR] FILE...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut out_dir: Option<PathBuf> = None;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => match args.next() {
                Some(dir) => out_dir = Some(dir.into()),
                None => return usage(),
            },
            "-h" | "--help" => return usage(),
            _ => files.push(PathBuf::from(arg)),
        }
    }
    if files.is_empty() {
        return usage();
    }
    if let Some(dir) = &out_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("cannot create {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let mut failed = 0;
    for path in &files {
        let label = path.display();
        let case = match golden::Case::load(path) {
            Ok(case) => case,
            Err(e) => {
                println!("{label}: cannot read: {e} FAIL");
                failed += 1;
                continue;
            }
        };
        let got = match golden::replay(&case) {
            Ok(got) => got,
            Err(e) => {
                println!("{label}: step failed: {e} FAIL");
                failed += 1;
                continue;
            }
        };
        let verdict = golden::compare(&case, &got);
        let status = if verdict.passed() { "ok" } else { "FAIL" };
        println!(
            "{:40} worst {:.4} of tolerance ({}) {status}",
            case.name, verdict.worst, verdict.at
        );
        if !verdict.passed() {
            failed += 1;
        }
        if let Some(dir) = &out_dir {
            let file = dir.join(format!("{}.json", case.name));
            if let Err(e) = std::fs::write(&file, golden::trajectory_json(&case, &got)) {
                eprintln!("cannot write {}: {e}", file.display());
                failed += 1;
            }
            if let Some(checkpoint) = &got.checkpoint {
                let file = dir.join(format!("{}.safetensors", case.name));
                if let Err(e) = std::fs::write(&file, checkpoint) {
                    eprintln!("cannot write {}: {e}", file.display());
                    failed += 1;
                }
            }
        }
    }
    println!(
        "{} of {} files passed (kernels: {})",
        files.len() - failed,
        files.len(),
        came::instruction_set()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
