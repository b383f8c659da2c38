//! The `finder` binary (see the library for what it does).

fn main() {
    finder::main_from(std::env::args_os())
}
