//! Test program for the criu component. Counts every 100 ms, writing "N TAG" to
//! COUNT_FILE and to stdout. Given IMAGES_DIR, it first checkpoints itself through
//! `rpc::dump` (leave running) and prints "dumped" or "restored" depending on whether it
//! continues as the original or as the restored copy; TAG says the same.
//!
//! usage: selfdump COUNT_FILE [IMAGES_DIR]

use opalcrs::components::criu::{binary, rpc};
use std::path::Path;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(count_file) = args.get(1).map(Path::new) else {
        eprintln!("usage: selfdump COUNT_FILE [IMAGES_DIR]");
        std::process::exit(2);
    };
    let tag = match args.get(2) {
        Some(images_dir) => {
            let outcome = binary::find(None).and_then(|bin| {
                let opts = rpc::DumpOptions {
                    log_level: 4,
                    ..rpc::DumpOptions::new(std::process::id() as i32, Path::new(images_dir))
                };
                rpc::dump(&bin, &opts)
            });
            let tag = match outcome {
                Ok(rpc::DumpOutcome::Dumped) => "dumped",
                Ok(rpc::DumpOutcome::Restored) => "restored",
                Err(e) => {
                    eprintln!("selfdump: {e}");
                    std::process::exit(1);
                }
            };
            println!("{tag}");
            tag
        }
        None => "counting",
    };
    let staging = count_file.with_extension("tmp");
    for n in 1u64.. {
        // Written aside and renamed, so a reader never sees a half-written file.
        std::fs::write(&staging, format!("{n} {tag}\n")).expect("write count");
        std::fs::rename(&staging, count_file).expect("rename count");
        println!("{n} {tag}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
