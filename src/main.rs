fn main() {
    let path = std::env::args().nth(1).unwrap_or_default();
    match shardgate::config::load(std::path::Path::new(&path)) {
        Ok(g) => println!("ok {} routes", g.routes.len()),
        Err(e) => println!("{e}"),
    }
}
