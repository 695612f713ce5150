//! demo (todo)
/// todo
pub fn run() -> crate::Result<()> {
    Ok(())
}
