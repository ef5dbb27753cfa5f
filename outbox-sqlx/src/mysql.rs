//! MySQL
