fn main() {
    std::process::exit(opalcrs::tools::restart::main());
}
