include!("../memory.rs");

fn main() {
    write_memory_x(Image::Bootloader);
    println!("cargo:rerun-if-changed=../memory.rs");
}
