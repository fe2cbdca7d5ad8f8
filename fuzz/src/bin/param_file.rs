fn main() {
    afl::fuzz!(|data: &[u8]| {
        opalcrs_fuzz::checks::param_file(data);
    });
}
