fn main() {
    std::process::exit(opalcrs::tools::checkpoint::main());
}
