//! `opal-info --param FRAMEWORK COMPONENT [--parsable]`: every parameter with its
//! current value, where that value came from, and its help text, in the spirit of the
//! original `ompi_info --param`.

use super::{parse, usage, OptionDef};
use crate::params::Params;

pub const OPTIONS: &[OptionDef] = &[
    OptionDef { names: &["h", "help"], value: None, help: "Show this help" },
    OptionDef {
        names: &["param"],
        value: Some("FRAMEWORK COMPONENT"),
        help: "Show the parameters of FRAMEWORK (crs, opal, ft, mca or all) and COMPONENT (base, self, criu, none, cr or all)",
    },
    OptionDef { names: &["parsable", "parseable"], value: None, help: "One colon-separated record per line" },
    OptionDef { names: &["version"], value: None, help: "Show the library version" },
];

/// (framework, component) of a parameter name: `crs_self_prefix` → (crs, self),
/// `crs` → (crs, base), `opal_cr_signal` → (opal, cr), `mca_base_param_files` → (mca, base).
pub fn classify(name: &str) -> (&str, &str) {
    let mut words = name.splitn(3, '_');
    let framework = words.next().unwrap_or(name);
    match (words.next(), words.next()) {
        (Some(component), Some(_))
            if ["base", "self", "criu", "none", "cr"].contains(&component) =>
        {
            (framework, component)
        }
        _ => (framework, "base"),
    }
}

/// The listing for one selection; empty when nothing matches.
pub fn render(params: &Params, framework: &str, component: &str, parsable: bool) -> String {
    let mut out = String::new();
    for (def, value, source) in params.iter() {
        let (fw, comp) = classify(def.name);
        if (framework != "all" && framework != fw) || (component != "all" && component != comp) {
            continue;
        }
        let shown = if value.is_empty() { "none" } else { value };
        if parsable {
            let prefix = format!("mca:{fw}:{comp}:param:{}", def.name);
            out.push_str(&format!(
                "{prefix}:value:{value}\n{prefix}:data_source:{source}\n{prefix}:help:{}\n",
                def.help
            ));
        } else {
            out.push_str(&format!(
                "MCA {fw}: parameter \"{}\" (current value: <{shown}>, data source: {source})\n          {}\n",
                def.name, def.help
            ));
        }
    }
    out
}

pub fn main() -> i32 {
    let args = super::args();
    let title = "Open PAL checkpoint/restart information (libopalcrs)";
    let parsed = match parse(&args, OPTIONS) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("opal-info: command line error ({e})\nType 'opal-info --help' for usage.");
            return 1;
        }
    };
    if parsed.has("h") {
        print!("{}", usage("opal-info [--param FRAMEWORK COMPONENT] [--parsable]", title, OPTIONS));
        return 0;
    }
    if parsed.has("version") {
        println!("libopalcrs {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let params = match crate::runtime::load_params(parsed.mca.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("opal-info: {e}");
            return 1;
        }
    };
    // `--param` takes two words: the option parser gives the first, the second is an operand.
    let framework = parsed.value("param").unwrap_or("all");
    let component = match (parsed.has("param"), parsed.operands.as_slice()) {
        (true, [component]) => component.as_str(),
        (false, []) => "all",
        _ => {
            eprintln!("opal-info: command line error (--param takes FRAMEWORK COMPONENT)");
            return 1;
        }
    };
    let listing = render(&params, framework, component, parsed.has("parsable"));
    if listing.is_empty() {
        eprintln!("opal-info: no parameters match framework {framework:?} component {component:?}");
        return 1;
    }
    print!("{listing}");
    let unknown: Vec<&String> = params.unknown().iter().collect();
    if !unknown.is_empty() && !parsed.has("parsable") {
        println!(
            "(ignored, not ours: {})",
            unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::PARAMS;

    #[test]
    fn names_map_to_framework_and_component() {
        assert_eq!(classify("crs_self_prefix"), ("crs", "self"));
        assert_eq!(classify("crs_criu_pidns"), ("crs", "criu"));
        assert_eq!(classify("crs"), ("crs", "base"));
        assert_eq!(classify("crs_base_snapshot_dir"), ("crs", "base"));
        assert_eq!(classify("opal_cr_signal"), ("opal", "cr"));
        assert_eq!(classify("ft_cr_enabled"), ("ft", "cr"));
        assert_eq!(classify("mca_base_param_files"), ("mca", "base"));
    }

    #[test]
    fn every_parameter_is_listed_once_under_all() {
        let listing = render(&Params::defaults(), "all", "all", true);
        for def in PARAMS {
            let key = format!(":param:{}:value:", def.name);
            assert_eq!(listing.matches(&key).count(), 1, "{}", def.name);
        }
        let one = render(&Params::defaults(), "crs", "self", false);
        assert!(one.contains("MCA crs: parameter \"crs_self_prefix\" (current value: <opal_crs_self_user>, data source: default value)"));
        assert!(!one.contains("crs_criu_"));
    }
}
