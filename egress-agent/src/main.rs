fn main() {
    eprintln!("egress-agent: not yet wired");
    std::process::exit(2);
}
