//! Prints the KvCluster CustomResourceDefinition as YAML:
//! `cargo run -p witan-operator --bin crdgen > crds/kvcluster.yaml`.

fn main() -> anyhow::Result<()> {
    print!("{}", witan_operator::crd::crd_yaml()?);
    Ok(())
}
