// Entry point of @cellfleet/sdk. The root tsconfig compiles sdk/src into the
// repository's dist/, outside this package, and npm links the package into
// node_modules, where a "main" of "../dist/..." would resolve next to the
// link instead of here. Node resolves this file's own requires from its real
// path, so the relative path below reaches the compiled SDK.
"use strict";
module.exports = require("../dist/sdk/src/index.js");
