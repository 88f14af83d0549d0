// Re-embed the migrations whenever a file in migrations/ changes, and record the git revision
// for the benchmark's results.json.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/logs/HEAD"); // moves on every commit
    if let Ok(out) = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        && out.status.success()
    {
        let rev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("cargo:rustc-env=SECKILL_GIT_REVISION={rev}");
    }
}
