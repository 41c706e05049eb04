import assert from "node:assert/strict";

import { sudoPrefixFor } from "../../../provider/src/transport/ssh";

describe("sudoPrefixFor", () => {
  it("is empty for root", () => {
    assert.equal(sudoPrefixFor({ user: "root" }), "");
    assert.equal(sudoPrefixFor({ user: "root", sudo: true }), "");
  });

  it("uses sudo -n for other users", () => {
    assert.equal(sudoPrefixFor({ user: "deploy" }), "sudo -n ");
    assert.equal(sudoPrefixFor({ user: "deploy", sudo: false }), "");
  });
});
