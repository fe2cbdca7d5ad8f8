fn main() {
    std::process::exit(opalcrs::tools::info::main());
}
