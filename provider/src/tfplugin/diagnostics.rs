//! Diagnostics (errors and warnings shown by terraform) and the attribute paths they point at.

use std::fmt;

/// One step into a value: an object attribute, a list/set element, or a map key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathStep {
    Attr(String),
    Index(i64),
    Key(String),
}

/// A path to an attribute inside a resource's value, e.g. `source.bucket` or `rules[0].prefix`.
///
/// Terraform uses it to underline the offending line of configuration and to name the attribute in
/// `RequiresReplace`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AttrPath {
    steps: Vec<PathStep>,
}

impl AttrPath {
    /// The path of a top-level attribute or block.
    pub fn root(name: impl Into<String>) -> Self {
        AttrPath {
            steps: vec![PathStep::Attr(name.into())],
        }
    }

    /// The empty path: the value as a whole.
    pub fn whole() -> Self {
        AttrPath::default()
    }

    pub fn attr(mut self, name: impl Into<String>) -> Self {
        self.steps.push(PathStep::Attr(name.into()));
        self
    }

    pub fn index(mut self, index: usize) -> Self {
        self.steps
            .push(PathStep::Index(i64::try_from(index).unwrap_or(i64::MAX)));
        self
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.steps.push(PathStep::Key(key.into()));
        self
    }

    pub fn steps(&self) -> &[PathStep] {
        &self.steps
    }

    pub fn is_whole(&self) -> bool {
        self.steps.is_empty()
    }
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return f.write_str("(value)");
        }
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                PathStep::Attr(name) if i == 0 => f.write_str(name)?,
                PathStep::Attr(name) => write!(f, ".{name}")?,
                PathStep::Index(index) => write!(f, "[{index}]")?,
                PathStep::Key(key) => write!(f, "[{key:?}]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// One line; terraform prints it after "Error: ".
    pub summary: String,
    /// The explanation, shown below the configuration excerpt.
    pub detail: String,
    /// The attribute the diagnostic is about, if any.
    pub path: Option<AttrPath>,
}

impl Diagnostic {
    pub fn error(summary: impl Into<String>, detail: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            summary: summary.into(),
            detail: detail.into(),
            path: None,
        }
    }

    pub fn warning(summary: impl Into<String>, detail: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(summary, detail)
        }
    }

    pub fn error_at(path: AttrPath, summary: impl Into<String>, detail: impl Into<String>) -> Self {
        Diagnostic::error(summary, detail).with_path(path)
    }

    pub fn warning_at(
        path: AttrPath,
        summary: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Diagnostic::warning(summary, detail).with_path(path)
    }

    pub fn with_path(mut self, path: AttrPath) -> Self {
        self.path = Some(path);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.summary)?;
        if let Some(path) = &self.path {
            write!(f, " (at {path})")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// The diagnostics of one operation, in the order they were raised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn new() -> Self {
        Diagnostics::default()
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn error(&mut self, summary: impl Into<String>, detail: impl Into<String>) {
        self.push(Diagnostic::error(summary, detail));
    }

    pub fn error_at(
        &mut self,
        path: AttrPath,
        summary: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.push(Diagnostic::error_at(path, summary, detail));
    }

    pub fn warning(&mut self, summary: impl Into<String>, detail: impl Into<String>) {
        self.push(Diagnostic::warning(summary, detail));
    }

    pub fn warning_at(
        &mut self,
        path: AttrPath,
        summary: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.push(Diagnostic::warning_at(path, summary, detail));
    }

    pub fn extend(&mut self, other: impl IntoIterator<Item = Diagnostic>) {
        self.0.extend(other);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(diagnostic: Diagnostic) -> Self {
        Diagnostics(vec![diagnostic])
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_display_like_terraform_references() {
        let path = AttrPath::root("source").attr("bucket");
        assert_eq!(path.to_string(), "source.bucket");
        let path = AttrPath::root("rules").index(2).attr("tags").key("team");
        assert_eq!(path.to_string(), "rules[2].tags[\"team\"]");
    }

    #[test]
    fn warnings_are_not_errors() {
        let mut diags = Diagnostics::new();
        diags.warning("slow", "");
        assert!(!diags.has_errors());
        diags.extend(Diagnostics::from(Diagnostic::error("bad", "worse")));
        assert!(diags.has_errors());
        assert_eq!(diags.len(), 2);
    }
}
