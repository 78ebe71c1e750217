//! The YAML pool file: schema, defaults, and validation that reports every problem with its line.
