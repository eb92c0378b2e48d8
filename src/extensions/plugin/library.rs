//! The only unsafe code of the daemon: opening a plugin library, resolving the four ABI
//! symbols and calling them. Everything that crosses the boundary is a NUL-terminated UTF-8
//! JSON string; see `plugins/README.md` for the contract.

use std::ffi::{CStr, CString, c_char};
use std::path::Path;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

/// The ABI version this daemon implements.
pub const ABI_VERSION: u32 = 1;

/// Symbol names of ABI version 1, NUL-terminated for `dlsym`.
const SYMBOL_ABI_VERSION: &[u8] = b"goose_plugin_abi_version\0";
const SYMBOL_MANIFEST: &[u8] = b"goose_plugin_manifest\0";
const SYMBOL_CALL: &[u8] = b"goose_plugin_call\0";
const SYMBOL_FREE: &[u8] = b"goose_plugin_free\0";

type AbiVersionFn = unsafe extern "C" fn() -> u32;
type ManifestFn = unsafe extern "C" fn() -> *mut c_char;
type CallFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut c_char;
type FreeFn = unsafe extern "C" fn(*mut c_char);

/// A loaded plugin library with its ABI functions resolved. Dropping it closes the
/// library, so it must outlive every call; callers hold it in an `Arc` for that.
pub struct PluginLibrary {
    call: CallFn,
    free: FreeFn,
    // Declared last, so it is dropped after the function pointers that point into it.
    _library: Library,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary").finish_non_exhaustive()
    }
}

/// A library opened and checked, with its manifest JSON.
#[derive(Debug)]
pub struct Opened {
    /// The library.
    pub library: PluginLibrary,
    /// The manifest text the plugin returned.
    pub manifest: String,
}

impl PluginLibrary {
    /// Opens the library at `path`, resolves the ABI symbols, checks the ABI version and
    /// reads the manifest. Opening runs the library's initializers, so only trusted files
    /// may reach here.
    pub fn open(path: &Path) -> Result<Opened, String> {
        // SAFETY: loading runs the library's initializers. The caller only passes files
        // from the config, the extensions directory or an admin API change, after
        // checking their permissions and ELF header. RTLD_NOW resolves every symbol now,
        // so a missing dependency fails here and not in a later call.
        let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
            .map_err(|error| format!("the dynamic loader rejected the library: {error}"))?;
        let missing: Vec<&str> = [
            SYMBOL_ABI_VERSION,
            SYMBOL_MANIFEST,
            SYMBOL_CALL,
            SYMBOL_FREE,
        ]
        .into_iter()
        // SAFETY: only the presence of the symbol is checked; it is not called.
        .filter(|name| unsafe { library.get::<*const ()>(name) }.is_err())
        .map(|name| std::str::from_utf8(&name[..name.len() - 1]).unwrap_or_default())
        .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the library is missing the plugin symbols {}; build it with the \
                 goose-plugin SDK's export_plugin! or export them as plugins/README.md \
                 describes",
                missing.join(", ")
            ));
        }
        // SAFETY: the symbols exist, and ABI version 1 defines their signatures as these
        // types. Only the version function is called before the version is known.
        let (abi_version, manifest, call, free) = unsafe {
            (
                *library
                    .get::<AbiVersionFn>(SYMBOL_ABI_VERSION)
                    .map_err(|e| e.to_string())?,
                *library
                    .get::<ManifestFn>(SYMBOL_MANIFEST)
                    .map_err(|e| e.to_string())?,
                *library
                    .get::<CallFn>(SYMBOL_CALL)
                    .map_err(|e| e.to_string())?,
                *library
                    .get::<FreeFn>(SYMBOL_FREE)
                    .map_err(|e| e.to_string())?,
            )
        };
        // SAFETY: a function without arguments returning an integer, as the ABI defines.
        let version = unsafe { abi_version() };
        if version != ABI_VERSION {
            return Err(format!(
                "the library implements plugin ABI version {version}, but this daemon \
                 supports version {ABI_VERSION} only; rebuild it against a matching \
                 goose-plugin SDK"
            ));
        }
        let plugin = Self {
            call,
            free,
            _library: library,
        };
        // SAFETY: the ABI version matches, so `manifest` returns a string that `free`
        // releases, or null.
        let manifest = unsafe { plugin.take_string(manifest()) }
            .ok_or("the plugin's manifest function returned null")??;
        Ok(Opened {
            library: plugin,
            manifest,
        })
    }

    /// Calls `tool` with `arguments`, a JSON text, and returns the plugin's JSON reply.
    /// Blocks for as long as the tool runs; the plugin may be called from several threads
    /// at once.
    pub fn call(&self, tool: &str, arguments: &str) -> Result<String, String> {
        let tool = CString::new(tool).map_err(|_| "the tool name contains a NUL byte")?;
        let arguments = CString::new(arguments)
            .map_err(|_| "the arguments contain a NUL byte outside a JSON string")?;
        // SAFETY: both pointers are valid NUL-terminated strings until the call returns,
        // and the plugin owns the returned string until `free` releases it.
        let reply = unsafe { (self.call)(tool.as_ptr(), arguments.as_ptr()) };
        // SAFETY: `reply` is null or a string returned by this plugin's call function.
        unsafe { self.take_string(reply) }.ok_or("the plugin's call function returned null")?
    }

    /// Copies a string the plugin returned and releases it with the plugin's `free`.
    /// Returns `None` for a null pointer.
    ///
    /// # Safety
    /// `value` is null or a NUL-terminated string returned by this plugin, not released.
    unsafe fn take_string(&self, value: *mut c_char) -> Option<Result<String, String>> {
        if value.is_null() {
            return None;
        }
        // SAFETY: non-null and NUL-terminated, as the caller guarantees.
        let text = unsafe { CStr::from_ptr(value) }
            .to_str()
            .map(str::to_owned)
            .map_err(|error| format!("the plugin returned a string that is not UTF-8: {error}"));
        // SAFETY: the plugin returned `value` and it is released exactly once, here.
        unsafe { (self.free)(value) };
        Some(text)
    }
}
