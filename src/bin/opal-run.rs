fn main() {
    std::process::exit(opalcrs::tools::run::main());
}
