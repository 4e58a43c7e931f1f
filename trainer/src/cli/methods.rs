//! `moco-train methods`: the registry's names, descriptions and recipes, and the presets'.

use clap::{Args, ValueEnum};

use crate::preset::Preset;

/// The batch the presets' recipes are shown for: `pretrain`'s default.
const DEFAULT_BATCH: usize = 256;

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
        let mut all = crate::methods::describe(self.arch);
        all["presets"] = presets();
        if !self.json {
            for m in all["methods"].as_array().into_iter().flatten() {
                print_entry(m, 8);
            }
            eprintln!("presets (--preset NAME, MoCo v2; shown at batch {DEFAULT_BATCH}):");
            for p in all["presets"].as_array().into_iter().flatten() {
                print_entry(p, 16);
            }
        }
        Ok(all)
    }
}

fn print_entry(entry: &serde_json::Value, width: usize) {
    let text = |key: &str| entry[key].as_str().unwrap_or_default().to_string();
    eprintln!("{:width$} {}", text("name"), text("about"));
    eprintln!("{:width$} {}", "", entry["recipe"]);
}

/// Each preset's name, description (its `--help` text) and the values it fills.
fn presets() -> serde_json::Value {
    Preset::value_variants()
        .iter()
        .map(|p| {
            let about = p
                .to_possible_value()
                .and_then(|v| v.get_help().map(|h| h.to_string()));
            serde_json::json!({"name": p.name(), "about": about,
                "recipe": p.recipe("mocov2", DEFAULT_BATCH).ok().map(only_set)})
        })
        .collect()
}

/// The values a recipe sets, without the ones it leaves to the method.
fn only_set(recipe: crate::config::Recipe) -> serde_json::Value {
    let mut v = serde_json::json!(recipe);
    if let Some(fields) = v.as_object_mut() {
        fields.retain(|_, value| !value.is_null());
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn presets_are_listed_with_their_help_and_values() {
        let all = super::presets();
        let fast = all
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "small-data-fast")
            .expect("small-data-fast listed");
        assert_eq!(fast["recipe"]["queue_size"], 1024);
        assert_eq!(fast["recipe"]["bn_splits"], 8, "at the default batch");
        assert!(fast["about"].as_str().unwrap().contains("per CPU-hour"));
        assert!(
            fast["recipe"].get("temperature").is_none(),
            "only what it sets"
        );
    }
}
