//! terraform-provider-dth: started by terraform, never by hand (see `tfplugin::serve`).

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(dth_provider::tfplugin::serve(dth_provider::DthProvider))
}
