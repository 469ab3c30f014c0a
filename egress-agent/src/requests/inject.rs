//! Step 4 of the engine: the credential of the matching rule goes into the request. Read at
//! request time (a rotated secret takes effect at once), marked sensitive, never logged; the
//! sandbox's own value of that header (if any) never goes upstream.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::policy::HttpRule;

/// Sets the rule's credential header, if it has one. Err: the one-line reason it could not.
pub fn credential(rule: &HttpRule, headers: &mut HeaderMap) -> Result<(), String> {
    let Some((name, source)) = rule.inject() else {
        return Ok(());
    };
    let secret = source
        .resolve()
        .map_err(|e| format!("the credential for {} is not available: {e}", rule.rule()))?;
    let (Ok(header), Ok(mut value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(secret.expose()),
    ) else {
        return Err(format!(
            "the credential {source} is not a valid value for header {name}"
        ));
    };
    value.set_sensitive(true);
    headers.remove(&header);
    headers.insert(header, value);
    Ok(())
}
