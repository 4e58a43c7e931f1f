//! `moco-train methods`: the registry's names, descriptions and recipes.

use clap::Args;

#[derive(Args, Debug)]
pub struct MethodsArgs {
    /// The backbone the recipes are for (the heads' widths follow its features).
    #[arg(long, default_value = "resnet18")]
    pub arch: models::Arch,
    #[arg(long)]
    pub json: bool,
}

impl MethodsArgs {
    pub fn run(&self) -> anyhow::Result<serde_json::Value> {
        let all = crate::methods::describe(self.arch);
        if !self.json {
            for m in all["methods"].as_array().into_iter().flatten() {
                eprintln!(
                    "{:8} {}",
                    m["name"].as_str().unwrap_or_default(),
                    m["about"].as_str().unwrap_or_default()
                );
                eprintln!("         {}", m["recipe"]);
            }
        }
        Ok(all)
    }
}
