fn main() {
    println!("Latent Studio");
}
