//! What the tests need of systemd: reading the unit files the user data installs and turning their `Exec*=`
//! lines into argument vectors the way systemd does (quotes, backslash escapes, `$VAR`/`${VAR}` from the
//! unit's environment, `$$` and `%%`), so that a test runs what a real instance would run.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};

/// A unit file: `[Section]` → key → values in order (keys such as `ExecStartPre=` repeat).
#[derive(Debug, Clone, Default)]
pub struct Unit {
    sections: BTreeMap<String, Vec<(String, String)>>,
}

impl Unit {
    pub fn parse(text: &str) -> anyhow::Result<Unit> {
        let mut unit = Unit::default();
        let mut section: Option<String> = None;
        // systemd joins lines ending in a backslash.
        let joined = text.replace("\\\n", " ");
        for (i, line) in joined.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.to_owned());
                unit.sections.entry(name.to_owned()).or_default();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .with_context(|| format!("line {}: not `key=value`: {line}", i + 1))?;
            let Some(s) = &section else {
                bail!("line {}: `{key}` outside a section", i + 1);
            };
            unit.sections
                .get_mut(s)
                .expect("section was added")
                .push((key.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(unit)
    }

    /// Every value of `key` in `section`, in order.
    pub fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.sections
            .get(section)
            .into_iter()
            .flatten()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The last value of `key` in `section` (later assignments win in systemd).
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).pop()
    }

    /// A duration setting in seconds (`90`, `90s`, `2min`, `1min 30s`).
    pub fn seconds(&self, section: &str, key: &str) -> Option<u64> {
        parse_seconds(self.get(section, key)?)
    }
}

fn parse_seconds(v: &str) -> Option<u64> {
    let mut total = 0;
    for part in v.split_whitespace() {
        let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let n: u64 = digits.parse().ok()?;
        total += match &part[digits.len()..] {
            "" | "s" | "sec" => n,
            "min" | "m" => n * 60,
            "h" => n * 3600,
            _ => return None,
        };
    }
    Some(total)
}

/// An `Exec*=` command: its words, and whether a leading `-` says a failure is ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    pub argv: Vec<String>,
    pub ignore_failure: bool,
}

/// Split an `Exec*=` value as systemd does, expanding `$VAR` and `${VAR}` from `env` (unset → empty; `${VAR}`
/// keeps a word, a bare `$VAR` word expands to nothing when unset).
pub fn exec(value: &str, env: &BTreeMap<String, String>) -> anyhow::Result<Exec> {
    let mut rest = value.trim();
    let mut ignore_failure = false;
    while let Some(c) = rest.chars().next().filter(|c| "-@:+!".contains(*c)) {
        ignore_failure |= c == '-';
        rest = &rest[1..];
    }
    let mut argv = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match c {
                '"' | '\'' if quote == Some(c) => quote = None,
                '"' | '\'' if quote.is_none() => quote = Some(c),
                c if c.is_whitespace() && quote.is_none() => break,
                '\\' => match chars.next() {
                    Some('n') => word.push('\n'),
                    Some('t') => word.push('\t'),
                    Some(e) => word.push(e),
                    None => bail!("`{value}` ends in a backslash"),
                },
                '%' => match chars.next() {
                    Some('%') => word.push('%'),
                    other => bail!("`{value}`: unsupported specifier %{other:?}"),
                },
                '$' => match chars.peek() {
                    Some('$') => {
                        chars.next();
                        word.push('$');
                    }
                    Some('{') => {
                        chars.next();
                        let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                        word.push_str(env.get(&name).map(String::as_str).unwrap_or(""));
                    }
                    _ => {
                        let mut name = String::new();
                        while let Some(c) = chars
                            .peek()
                            .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
                        {
                            name.push(*c);
                            chars.next();
                        }
                        word.push_str(env.get(&name).map(String::as_str).unwrap_or(""));
                    }
                },
                c => word.push(c),
            }
        }
        if quote.is_some() {
            bail!("`{value}`: unclosed quote");
        }
        argv.push(word);
    }
    if argv.is_empty() {
        bail!("empty command");
    }
    Ok(Exec {
        argv,
        ignore_failure,
    })
}

/// `KEY=value` lines of an `EnvironmentFile=` (comments and blank lines skipped, surrounding quotes removed).
pub fn environment_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_lines_split_like_systemd() {
        let env = BTreeMap::from([("ID".to_owned(), "i-1".to_owned())]);
        let e = exec(
            r#"-/usr/bin/docker run "it's odd" a\"b --env X=${ID} cost$$ 100%% $ID"#,
            &env,
        )
        .unwrap();
        assert!(e.ignore_failure);
        assert_eq!(
            e.argv,
            [
                "/usr/bin/docker",
                "run",
                "it's odd",
                "a\"b",
                "--env",
                "X=i-1",
                "cost$",
                "100%",
                "i-1"
            ]
        );
        assert!(exec("\"open", &env).is_err());
    }

    #[test]
    fn units_and_durations() {
        let u = Unit::parse(
            "[Unit]\nA=1\n# c\n[Service]\nExecStartPre=a\nExecStartPre=b \\\n  c\nTimeoutStopSec=2min 5s\n",
        )
        .unwrap();
        assert_eq!(u.all("Service", "ExecStartPre"), ["a", "b    c"]);
        assert_eq!(u.seconds("Service", "TimeoutStopSec"), Some(125));
        assert_eq!(u.get("Unit", "A"), Some("1"));
        assert!(Unit::parse("A=1").is_err());
    }
}
