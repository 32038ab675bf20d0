//! Configuration: the RON schema, loading with positioned errors, and
//! validation of everything that can be checked before serving.
//!
//! `config/` knows nothing of sockets or shards: it turns text into a
//! [`Gateway`] value that is known to be consistent, or into a
//! [`ConfigError`] naming every problem with file, line, column and field.
mod cache;
mod edge;
mod grpc;
mod position;
mod redact;
mod resilience;
mod schema;
mod validate;

pub use validate::{
    is_token_byte, path_template_params, resolve, split_scheme, target_host, template_params,
};

pub use cache::*;
pub use edge::*;
pub use grpc::*;
pub use resilience::*;
pub use schema::*;

use std::fmt;
use std::path::Path;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, 0 when the position is unknown.
    pub line: usize,
    /// 1-based column, 0 when the position is unknown.
    pub col: usize,
    /// Dotted path of the offending field, e.g. `routes[2].upstream`.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as named by the user.
    pub file: String,
    /// At least one problem.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, p.line, p.col, p.field, p.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Gateway, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        problems: vec![Problem {
            line: 0,
            col: 0,
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse(&file, &text)
}

/// Parses and validates config text; `file` is only used in messages.
pub fn parse(file: &str, text: &str) -> Result<Gateway, ConfigError> {
    let options = ron::Options::default().with_default_extension(
        ron::extensions::Extensions::IMPLICIT_SOME
            | ron::extensions::Extensions::UNWRAP_VARIANT_NEWTYPES,
    );
    let mut gateway: Gateway = options.from_str(text).map_err(|e| ConfigError {
        file: file.to_string(),
        problems: vec![syntax_problem(&e)],
    })?;
    crate::validate::resolve_schema_paths(&mut gateway, Path::new(file));
    crate::grpc::stage::resolve_paths(&mut gateway, Path::new(file));
    let problems = validate::validate(&gateway, text);
    if problems.is_empty() {
        Ok(gateway)
    } else {
        Err(ConfigError {
            file: file.to_string(),
            problems,
        })
    }
}

fn syntax_problem(e: &ron::error::SpannedError) -> Problem {
    use ron::error::Error as E;
    let (field, message) = match &e.code {
        E::NoSuchStructField {
            expected,
            found,
            outer,
        } => (
            qualified(outer, found),
            format!("unknown field (expected one of: {})", expected.join(", ")),
        ),
        E::MissingStructField { field, outer } => {
            (qualified(outer, field), "required field is missing".into())
        }
        E::DuplicateStructField { field, outer } => {
            (qualified(outer, field), "field given twice".into())
        }
        E::NoSuchEnumVariant {
            expected,
            found,
            outer,
        } => (
            qualified(outer, found),
            format!("unknown variant (expected one of: {})", expected.join(", ")),
        ),
        other => ("(syntax)".to_string(), other.to_string()),
    };
    Problem {
        line: e.position.line,
        col: e.position.col,
        field,
        message,
    }
}

fn qualified(outer: &Option<String>, name: &str) -> String {
    match outer {
        Some(o) => format!("{o}.{name}"),
        None => name.to_string(),
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.line, self.col, self.field, self.message
        )
    }
}
