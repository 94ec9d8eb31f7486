//! placeholder
pub async fn run(_d: std::path::PathBuf) -> Result<(), String> { Err("todo".into()) }
pub async fn probe(_u: &str) -> Result<(), String> { Err("todo".into()) }
