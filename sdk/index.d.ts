// Types of @cellfleet/sdk, taken from the generated sources so that code in
// this repository type-checks against the SDK before dist/ is built.
export * from "./src/index";
