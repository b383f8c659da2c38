//! Schemas: declared once per resource, they drive the wire types, validation, planning defaults
//! and the generated docs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::diagnostics::{AttrPath, Diagnostics};
use super::value::{Type, Value};

/// A check on a known, non-null attribute value; the error is shown as the diagnostic's detail.
pub type Validator = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// A resource's (or the provider's) schema: its version (bump it when the stored state's shape
/// changes, and upgrade older states) and its top-level block.
#[derive(Debug, Clone)]
pub struct Schema {
    pub version: i64,
    pub block: Block,
}

/// A set of attributes and nested blocks, with a Markdown description.
#[derive(Debug, Clone, Default)]
pub struct Block {
    pub description: String,
    pub attributes: Vec<Attribute>,
    pub blocks: Vec<NestedBlock>,
}

#[derive(Clone)]
pub struct Attribute {
    pub name: String,
    pub ty: Type,
    pub description: String,
    pub required: bool,
    pub optional: bool,
    pub computed: bool,
    pub sensitive: bool,
    pub requires_replace: bool,
    pub default: Option<Value>,
    pub one_of: Option<Vec<String>>,
    pub validators: Vec<Validator>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nesting {
    /// At most one block; its value is an object (null when absent).
    Single,
    /// Any number of blocks; its value is a list of objects.
    List,
}

#[derive(Debug, Clone)]
pub struct NestedBlock {
    pub name: String,
    pub nesting: Nesting,
    pub block: Block,
    pub min_items: i64,
    pub max_items: i64,
    pub requires_replace: bool,
}

impl Schema {
    pub fn new(version: i64, block: Block) -> Self {
        Schema { version, block }
    }

    /// The object type of a whole value of this schema.
    pub fn value_type(&self) -> Type {
        self.block.value_type()
    }

    /// The schema-driven checks (`one_of`, validators) over a configuration value. Unknown and
    /// null values are skipped: terraform validates again once they are known, and checks
    /// `required` itself.
    pub fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        self.block.validate(config, None, &mut diags);
        diags
    }

    /// Looks up an attribute by path through nested blocks (`source.bucket`, `rules[0].prefix`).
    pub fn attribute(&self, path: &AttrPath) -> Option<&Attribute> {
        use super::diagnostics::PathStep;
        let mut block = &self.block;
        let mut steps = path.steps().iter().peekable();
        while let Some(step) = steps.next() {
            let PathStep::Attr(name) = step else {
                continue;
            };
            if let Some(attribute) = block.attributes.iter().find(|a| &a.name == name) {
                return steps.peek().is_none().then_some(attribute);
            }
            block = &block.blocks.iter().find(|b| &b.name == name)?.block;
        }
        None
    }
}

impl Block {
    pub fn new() -> Self {
        Block::default()
    }

    /// Markdown, shown in docs and by language servers.
    pub fn description(mut self, markdown: impl Into<String>) -> Self {
        self.description = markdown.into();
        self
    }

    pub fn attribute(mut self, attribute: Attribute) -> Self {
        self.attributes.push(attribute);
        self
    }

    pub fn block(mut self, block: NestedBlock) -> Self {
        self.blocks.push(block);
        self
    }

    pub fn value_type(&self) -> Type {
        let mut attributes: BTreeMap<String, Type> = self
            .attributes
            .iter()
            .map(|a| (a.name.clone(), a.ty.clone()))
            .collect();
        for nested in &self.blocks {
            let object = nested.block.value_type();
            let ty = match nested.nesting {
                Nesting::Single => object,
                Nesting::List => Type::list(object),
            };
            attributes.insert(nested.name.clone(), ty);
        }
        Type::Object(attributes)
    }

    fn validate(&self, value: &Value, path: Option<&AttrPath>, diags: &mut Diagnostics) {
        if value.fields().is_none() {
            return;
        }
        for attribute in &self.attributes {
            let attr_path = extend(path, &attribute.name);
            attribute.validate(value.get(&attribute.name), &attr_path, diags);
        }
        for nested in &self.blocks {
            let block_path = extend(path, &nested.name);
            let nested_value = value.get(&nested.name);
            match nested.nesting {
                Nesting::Single => nested
                    .block
                    .validate(nested_value, Some(&block_path), diags),
                Nesting::List => {
                    for (i, element) in nested_value.items().iter().enumerate() {
                        let element_path = block_path.clone().index(i);
                        nested.block.validate(element, Some(&element_path), diags);
                    }
                }
            }
        }
    }

    /// The framework's part of planning: defaults for attributes null in config, unknown for
    /// computed attributes of objects being created. `prior` is `None` for an object that does
    /// not exist yet (the resource on create, or a newly added nested block).
    pub(crate) fn plan(&self, prior: Option<&Value>, config: &Value, proposed: &Value) -> Value {
        if proposed.fields().is_none() {
            return proposed.clone();
        }
        let mut planned = proposed.clone();
        for attribute in &self.attributes {
            if !config.get(&attribute.name).is_null() {
                continue;
            }
            if let Some(default) = &attribute.default {
                planned.set(attribute.name.clone(), default.clone());
            } else if attribute.computed && prior.is_none() {
                planned.set(attribute.name.clone(), Value::Unknown);
            }
            // On update terraform's proposed value already carries the prior value of a computed
            // attribute left out of config.
        }
        for nested in &self.blocks {
            let name = &nested.name;
            let prior_nested = prior.map(|p| p.get(name)).filter(|v| !v.is_null());
            let (config_nested, proposed_nested) = (config.get(name), proposed.get(name));
            let planned_nested = match nested.nesting {
                Nesting::Single => nested
                    .block
                    .plan(prior_nested, config_nested, proposed_nested),
                Nesting::List => match proposed_nested {
                    Value::List(elements) => Value::List(
                        elements
                            .iter()
                            .enumerate()
                            .map(|(i, element)| {
                                let prior_element = prior_nested.and_then(|p| p.items().get(i));
                                let config_element =
                                    config_nested.items().get(i).unwrap_or(&Value::Null);
                                nested.block.plan(prior_element, config_element, element)
                            })
                            .collect(),
                    ),
                    other => other.clone(),
                },
            };
            planned.set(name.clone(), planned_nested);
        }
        planned
    }

    /// Paths of `requires_replace` attributes and blocks whose planned value differs from prior.
    pub(crate) fn replacements(
        &self,
        prior: &Value,
        planned: &Value,
        path: Option<&AttrPath>,
        out: &mut Vec<AttrPath>,
    ) {
        for attribute in &self.attributes {
            let name = &attribute.name;
            if attribute.requires_replace && prior.get(name) != planned.get(name) {
                out.push(extend(path, name));
            }
        }
        for nested in &self.blocks {
            let name = &nested.name;
            let block_path = extend(path, name);
            let (prior_nested, planned_nested) = (prior.get(name), planned.get(name));
            if nested.requires_replace && prior_nested != planned_nested {
                out.push(block_path);
                continue;
            }
            match nested.nesting {
                Nesting::Single => {
                    nested
                        .block
                        .replacements(prior_nested, planned_nested, Some(&block_path), out)
                }
                Nesting::List => {
                    for (i, element) in planned_nested.items().iter().enumerate() {
                        let prior_element = prior_nested.items().get(i).unwrap_or(&Value::Null);
                        let element_path = block_path.clone().index(i);
                        nested
                            .block
                            .replacements(prior_element, element, Some(&element_path), out);
                    }
                }
            }
        }
    }
}

fn extend(path: Option<&AttrPath>, name: &str) -> AttrPath {
    match path {
        Some(path) => path.clone().attr(name),
        None => AttrPath::root(name),
    }
}

impl Attribute {
    pub fn new(name: impl Into<String>, ty: Type) -> Self {
        Attribute {
            name: name.into(),
            ty,
            description: String::new(),
            required: false,
            optional: false,
            computed: false,
            sensitive: false,
            requires_replace: false,
            default: None,
            one_of: None,
            validators: Vec::new(),
        }
    }

    pub fn string(name: impl Into<String>) -> Self {
        Attribute::new(name, Type::String)
    }

    pub fn number(name: impl Into<String>) -> Self {
        Attribute::new(name, Type::Number)
    }

    pub fn bool(name: impl Into<String>) -> Self {
        Attribute::new(name, Type::Bool)
    }

    /// A list whose elements are `element`.
    pub fn list(name: impl Into<String>, element: Type) -> Self {
        Attribute::new(name, Type::list(element))
    }

    /// A set whose elements are `element`.
    pub fn set(name: impl Into<String>, element: Type) -> Self {
        Attribute::new(name, Type::set(element))
    }

    /// A map from strings to `element`.
    pub fn map(name: impl Into<String>, element: Type) -> Self {
        Attribute::new(name, Type::map(element))
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// Set by the provider; with `optional()` the user may set it too.
    pub fn computed(mut self) -> Self {
        self.computed = true;
        self
    }

    /// Terraform redacts the value in plans and output.
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }

    pub fn description(mut self, markdown: impl Into<String>) -> Self {
        self.description = markdown.into();
        self
    }

    /// A change to this attribute destroys and re-creates the resource.
    pub fn requires_replace(mut self) -> Self {
        self.requires_replace = true;
        self
    }

    /// The value planned whenever the configuration leaves the attribute out. Implies
    /// `computed()`: terraform only lets a provider plan a value the configuration did not set
    /// for computed attributes.
    pub fn default(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self.computed = true;
        self
    }

    /// The allowed values of a string attribute (or of each element of a list/set of strings).
    pub fn one_of(mut self, allowed: &[&str]) -> Self {
        self.one_of = Some(allowed.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    /// A check run on the value once it is wholly known and not null.
    pub fn validator(
        mut self,
        check: impl Fn(&Value) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validators.push(Arc::new(check));
        self
    }

    fn validate(&self, value: &Value, path: &AttrPath, diags: &mut Diagnostics) {
        if value.is_null() || value.is_unknown() {
            return;
        }
        if let Some(allowed) = &self.one_of {
            let candidates: Vec<(AttrPath, &Value)> = match value {
                Value::List(items) | Value::Set(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| (path.clone().index(i), item))
                    .collect(),
                other => vec![(path.clone(), other)],
            };
            for (item_path, item) in candidates {
                let Some(s) = item.as_str() else {
                    continue;
                };
                if !allowed.iter().any(|a| a == s) {
                    let choices = allowed
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    diags.error_at(
                        item_path.clone(),
                        "Invalid attribute value",
                        format!("{item_path} must be one of {choices}; got {s:?}."),
                    );
                }
            }
        }
        if value.is_fully_known() {
            for check in &self.validators {
                if let Err(message) = check(value) {
                    diags.error_at(
                        path.clone(),
                        "Invalid attribute value",
                        format!("{path}: {message}"),
                    );
                }
            }
        }
    }
}

impl fmt::Debug for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attribute")
            .field("name", &self.name)
            .field("ty", &self.ty)
            .field("required", &self.required)
            .field("optional", &self.optional)
            .field("computed", &self.computed)
            .field("sensitive", &self.sensitive)
            .field("requires_replace", &self.requires_replace)
            .field("default", &self.default)
            .field("one_of", &self.one_of)
            .field("validators", &self.validators.len())
            .finish_non_exhaustive()
    }
}

impl NestedBlock {
    fn new(name: impl Into<String>, nesting: Nesting, block: Block) -> Self {
        NestedBlock {
            name: name.into(),
            nesting,
            block,
            min_items: 0,
            max_items: 0,
            requires_replace: false,
        }
    }

    /// A block that appears at most once (`min_items(1)` makes it required).
    pub fn single(name: impl Into<String>, block: Block) -> Self {
        NestedBlock::new(name, Nesting::Single, block)
    }

    /// A block that may repeat.
    pub fn list(name: impl Into<String>, block: Block) -> Self {
        NestedBlock::new(name, Nesting::List, block)
    }

    pub fn min_items(mut self, n: i64) -> Self {
        self.min_items = n;
        self
    }

    pub fn max_items(mut self, n: i64) -> Self {
        self.max_items = n;
        self
    }

    /// Sets the nested block's Markdown description.
    pub fn description(mut self, markdown: impl Into<String>) -> Self {
        self.block.description = markdown.into();
        self
    }

    /// Any change inside the block destroys and re-creates the resource.
    pub fn requires_replace(mut self) -> Self {
        self.requires_replace = true;
        self
    }

    /// Whether the configuration must contain the block.
    pub fn is_required(&self) -> bool {
        self.min_items > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::new(
            1,
            Block::new()
                .attribute(Attribute::string("id").computed())
                .attribute(Attribute::string("name").required().requires_replace())
                .attribute(Attribute::number("size").optional().default(1u64))
                .attribute(Attribute::string("kind").optional().one_of(&["a", "b"]))
                .block(
                    NestedBlock::single(
                        "source",
                        Block::new()
                            .attribute(
                                Attribute::string("bucket")
                                    .required()
                                    .requires_replace()
                                    .validator(|v| match v.as_str() {
                                        Some(s) if s.len() >= 3 => Ok(()),
                                        _ => Err("must be at least 3 characters".into()),
                                    }),
                            )
                            .attribute(Attribute::string("arn").computed()),
                    )
                    .max_items(1),
                )
                .block(NestedBlock::list(
                    "rule",
                    Block::new().attribute(Attribute::list("modes", Type::String).one_of(&["x"])),
                )),
        )
    }

    #[test]
    fn value_type_nests_blocks() {
        let ty = schema().value_type();
        let Type::Object(attributes) = ty else {
            panic!("not an object")
        };
        assert!(matches!(attributes["source"], Type::Object(_)));
        assert!(
            matches!(&attributes["rule"], Type::List(inner) if matches!(**inner, Type::Object(_)))
        );
        assert_eq!(attributes["size"], Type::Number);
    }

    #[test]
    fn validation_points_at_nested_attributes() {
        let config = Value::object([
            ("kind", Value::from("c")),
            ("source", Value::object([("bucket", Value::from("ab"))])),
            (
                "rule",
                Value::list([
                    Value::object([("modes", Value::list(["x"]))]),
                    Value::object([("modes", Value::list(["x", "y"]))]),
                ]),
            ),
        ]);
        let diags = schema().validate(&config);
        let paths: Vec<String> = diags
            .iter()
            .map(|d| d.path.as_ref().map(ToString::to_string).unwrap_or_default())
            .collect();
        assert_eq!(paths, ["kind", "source.bucket", "rule[1].modes[1]"]);
        assert!(diags.iter().all(|d| d.is_error()));
    }

    #[test]
    fn unknown_values_are_not_validated() {
        let config = Value::object([
            ("kind", Value::Unknown),
            ("source", Value::object([("bucket", Value::Unknown)])),
        ]);
        assert!(schema().validate(&config).is_empty());
    }

    #[test]
    fn attribute_lookup_by_path() {
        let s = schema();
        let path = AttrPath::root("source").attr("bucket");
        assert_eq!(s.attribute(&path).map(|a| a.name.as_str()), Some("bucket"));
        assert!(s.attribute(&AttrPath::root("nope")).is_none());
    }
}
