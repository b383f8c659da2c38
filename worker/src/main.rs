//! The `worker` binary (see the library for what it does).

fn main() {
    worker::main_from(std::env::args_os())
}
