//! SDK for goose-api native tool plugins.
//!
//! A plugin is a `cdylib` crate whose tools are ordinary Rust functions. Each tool takes one
//! argument, a type that implements [`serde::Deserialize`] and [`schemars::JsonSchema`]
//! (its schema becomes the tool's input schema), and returns a [`ToolResult`]: a
//! `String`, an [`Output`], or a `Result` of either whose error is shown to the model as a
//! failed result. [`export_plugin!`] generates the four C symbols of ABI version 1, which
//! `plugins/README.md` describes.
//!
//! ```ignore
//! use goose_plugin::export_plugin;
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Greeting {
//!     /// Who to greet.
//!     name: String,
//! }
//!
//! fn greet(input: Greeting) -> String {
//!     format!("Hello, {}!", input.name)
//! }
//!
//! export_plugin! {
//!     name: "hello",
//!     version: env!("CARGO_PKG_VERSION"),
//!     tools: [greet: "Greets someone by name"],
//! }
//! ```
//!
//! Every generated symbol catches panics, so a panicking tool becomes an error result for
//! the caller instead of aborting the daemon. That needs `panic = "unwind"`, the default;
//! with `panic = "abort"` a panic ends the daemon.

use std::fmt::Display;

use serde::Serialize;

#[doc(hidden)]
pub mod __private;

/// The ABI version the generated symbols implement.
pub const ABI_VERSION: u32 = 1;

/// One part of a tool's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// An image, base64 encoded.
    Image {
        /// Base64 image bytes.
        data: String,
        /// MIME type such as `image/png`.
        mime_type: String,
    },
    /// A resource the tool refers to or embeds.
    Resource {
        /// Resource URI.
        uri: String,
        /// MIME type, if known.
        #[serde(skip_serializing_if = "Option::is_none")]
        mime_type: Option<String>,
        /// Embedded text, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
}

/// A tool's result: its parts and whether the tool reports a failure.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Output {
    /// Result parts, in order.
    pub content: Vec<Content>,
    /// Whether the tool reports a failure, which the model sees as an error result.
    pub is_error: bool,
}

impl Output {
    /// Creates a successful result with one text part.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            content: vec![Content::Text { text: text.into() }],
            is_error: false,
        }
    }

    /// Creates a failed result with one text part.
    pub fn error(text: impl Into<String>) -> Self {
        Self {
            is_error: true,
            ..Self::text(text)
        }
    }
}

impl From<String> for Output {
    fn from(text: String) -> Self {
        Self::text(text)
    }
}

impl From<&str> for Output {
    fn from(text: &str) -> Self {
        Self::text(text)
    }
}

impl From<serde_json::Value> for Output {
    fn from(value: serde_json::Value) -> Self {
        Self::text(value.to_string())
    }
}

/// What a tool function may return.
pub trait ToolResult {
    /// Converts the value into the result sent to the daemon.
    fn into_output(self) -> Output;
}

impl ToolResult for Output {
    fn into_output(self) -> Output {
        self
    }
}

impl ToolResult for String {
    fn into_output(self) -> Output {
        Output::text(self)
    }
}

impl ToolResult for serde_json::Value {
    fn into_output(self) -> Output {
        Output::from(self)
    }
}

impl<T: Into<Output>, E: Display> ToolResult for Result<T, E> {
    fn into_output(self) -> Output {
        match self {
            Ok(value) => value.into(),
            Err(error) => Output::error(error.to_string()),
        }
    }
}

/// Exports ordinary functions as the tools of a plugin, generating the manifest and the
/// four C symbols of ABI version 1. Use it once per `cdylib` crate.
///
/// Each entry of `tools` is `function: "description"`; the tool's name is the function's
/// name and its input schema is derived from the function's argument type.
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:expr,
        version: $version:expr,
        tools: [ $( $tool:ident : $description:expr ),* $(,)? ] $(,)?
    ) => {
        /// ABI version of this plugin, checked by the daemon before anything else.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn goose_plugin_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        /// The manifest as a JSON string, released with `goose_plugin_free`.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn goose_plugin_manifest() -> *mut ::std::os::raw::c_char {
            $crate::__private::manifest($name, $version, || {
                vec![$($crate::__private::describe(stringify!($tool), $description, $tool)),*]
            })
        }

        /// Calls one tool; returns a JSON string released with `goose_plugin_free`.
        ///
        /// # Safety
        /// `tool` and `arguments` are NUL-terminated UTF-8 strings valid for the call.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn goose_plugin_call(
            tool: *const ::std::os::raw::c_char,
            arguments: *const ::std::os::raw::c_char,
        ) -> *mut ::std::os::raw::c_char {
            // SAFETY: the caller passes NUL-terminated strings valid for this call, as the
            // ABI requires.
            unsafe {
                $crate::__private::call(tool, arguments, |name, arguments| match name {
                    $(stringify!($tool) => Some($crate::__private::invoke($tool, arguments)),)*
                    _ => None,
                })
            }
        }

        /// Releases a string returned by this plugin.
        ///
        /// # Safety
        /// `value` was returned by this plugin and is released once.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn goose_plugin_free(value: *mut ::std::os::raw::c_char) {
            // SAFETY: the caller passes a string this plugin returned, once.
            unsafe { $crate::__private::free(value) }
        }
    };
}

/// Argument type of a tool that takes no arguments.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}
