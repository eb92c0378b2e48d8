//! Runtime of the symbols `export_plugin!` generates. Not a stable API: plugins use the
//! macro, which calls these functions.
//!
//! Unsafe code is allowed here only to read the C strings the daemon passes and to release
//! the strings the plugin returns.
#![allow(unsafe_code)]

use std::any::Any;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{Output, ToolResult};

/// One tool in the manifest.
#[derive(Debug, Serialize)]
pub struct ToolEntry {
    name: &'static str,
    description: String,
    input_schema: Value,
}

/// Why a call produced no result, sent as `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
pub struct CallError {
    code: &'static str,
    message: String,
}

/// Describes the tool `name` implemented by `function`, whose argument type gives the
/// input schema.
pub fn describe<A, R, F>(name: &'static str, description: &str, _function: F) -> ToolEntry
where
    A: JsonSchema,
    F: Fn(A) -> R,
{
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<A>();
    let mut input_schema = serde_json::to_value(schema).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut input_schema {
        // The model needs the shape only; `$schema` and `title` repeat what it knows.
        map.remove("$schema");
        map.remove("title");
    }
    ToolEntry {
        name,
        description: description.to_owned(),
        input_schema,
    }
}

/// Decodes `arguments` into the function's argument type and calls it. JSON `null`
/// counts as an empty object, so tools without arguments accept either.
pub fn invoke<A, R, F>(function: F, arguments: Value) -> Result<Output, CallError>
where
    A: DeserializeOwned,
    R: ToolResult,
    F: Fn(A) -> R,
{
    let arguments = if arguments.is_null() {
        json!({})
    } else {
        arguments
    };
    let input: A = serde_json::from_value(arguments).map_err(|error| CallError {
        code: "invalid_arguments",
        message: error.to_string(),
    })?;
    Ok(function(input).into_output())
}

/// Builds the manifest JSON, or an error object if building it panicked.
pub fn manifest(name: &str, version: &str, tools: impl FnOnce() -> Vec<ToolEntry>) -> *mut c_char {
    let built = catch_unwind(AssertUnwindSafe(
        || json!({"name": name, "version": version, "tools": tools()}),
    ));
    let value = built.unwrap_or_else(
        |payload| json!({"error": {"code": "panicked", "message": panic_message(&payload)}}),
    );
    into_c_string(&value)
}

/// Reads the call's strings, dispatches to the tool and encodes its result. Never
/// unwinds: a panic in the tool or here becomes an error object.
///
/// # Safety
/// `tool` and `arguments` are null or NUL-terminated strings valid for this call.
pub unsafe fn call(
    tool: *const c_char,
    arguments: *const c_char,
    dispatch: impl FnOnce(&str, Value) -> Option<Result<Output, CallError>>,
) -> *mut c_char {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller guarantees both pointers are null or valid C strings.
        let (tool, arguments) = unsafe { (read(tool, "tool")?, read(arguments, "arguments")?) };
        let arguments: Value = serde_json::from_str(arguments).map_err(|error| CallError {
            code: "invalid_arguments",
            message: format!("the arguments are not valid JSON: {error}"),
        })?;
        dispatch(tool, arguments).unwrap_or_else(|| {
            Err(CallError {
                code: "unknown_tool",
                message: format!("this plugin has no tool named {tool:?}"),
            })
        })
    }));
    let value = match outcome {
        Ok(Ok(output)) => serde_json::to_value(output).unwrap_or_else(
            |error| json!({"error": {"code": "failed", "message": error.to_string()}}),
        ),
        Ok(Err(error)) => json!({"error": {"code": error.code, "message": error.message}}),
        Err(payload) => json!({"error": {
            "code": "panicked",
            "message": format!("the tool panicked: {}", panic_message(&payload)),
        }}),
    };
    into_c_string(&value)
}

/// Releases a string returned by [`manifest`] or [`call`].
///
/// # Safety
/// `value` is null or was returned by this module and not released before.
pub unsafe fn free(value: *mut c_char) {
    if !value.is_null() {
        // SAFETY: `value` came from `CString::into_raw` in `into_c_string`.
        drop(unsafe { CString::from_raw(value) });
    }
}

/// # Safety
/// `value` is null or a NUL-terminated string valid for `'a`.
unsafe fn read<'a>(value: *const c_char, what: &str) -> Result<&'a str, CallError> {
    let invalid = |message: String| CallError {
        code: "invalid_request",
        message,
    };
    if value.is_null() {
        return Err(invalid(format!("the {what} pointer is null")));
    }
    // SAFETY: non-null, and the caller guarantees it is a valid C string.
    let bytes = unsafe { CStr::from_ptr(value) };
    bytes
        .to_str()
        .map_err(|error| invalid(format!("the {what} string is not UTF-8: {error}")))
}

fn into_c_string(value: &Value) -> *mut c_char {
    // serde_json escapes U+0000, so the text has no interior NUL byte.
    CString::new(value.to_string())
        .unwrap_or_default()
        .into_raw()
}

fn panic_message(payload: &Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
