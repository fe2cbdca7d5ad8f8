fn main() {
    afl::fuzz!(|data: &[u8]| {
        opalcrs_fuzz::checks::control(data);
    });
}
