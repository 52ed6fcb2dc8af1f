// The JSON Schemas of docs/schemas/ under ajv, the validator most JavaScript tools use: its
// `pattern` is an ECMA-262 regular expression with the u flag and its lengths count code
// points, where the Rust tests use the jsonschema crate's translation to Rust's regex. Every
// named edge of tests/schema_edges.json must get its `schema` verdict here too, and each
// schema's examples must be valid. Run by scripts/check-asyncapi.sh with NODE_PATH set to the
// AsyncAPI CLI's node_modules, which holds ajv and ajv-formats.
"use strict";
const fs = require("fs");
const Ajv2020 = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats").default;

const read = (path) => JSON.parse(fs.readFileSync(path, "utf8"));
// strict: false because the schemas carry annotations ajv's strict mode does not know.
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);

const failures = [];
const schemas = {};
for (const name of ["requested", "completed", "rejected"]) {
  const schema = read(`docs/schemas/tenant.signup.${name}.json`);
  schemas[name] = ajv.compile(schema);
  for (const example of schema.examples || []) {
    if (!schemas[name](example)) {
      failures.push(`${name}: its example ${JSON.stringify(example)} is invalid: ${ajv.errorsText(schemas[name].errors)}`);
    }
  }
}

// The valid event of tests/schema_agreement.rs, changed at one place per case.
const validEvent = () => ({
  event_id: "7d0c8c52-3f3a-4e4e-9a55-2c1d0a3b9f10",
  type: "tenant.signup.requested",
  version: 1,
  occurred_at: "2026-11-22T12:00:00Z",
  tenant: {
    business_name: "Acme Bakery",
    slug: "acme-bakery",
    owner_email: "owner@acme.example",
    tier: "starter",
    is_demo: false,
  },
});

const edges = read("tests/schema_edges.json").cases;
for (const c of edges) {
  const event = validEvent();
  const path = c.field.split(".");
  const parent = path.length === 2 ? event[path[0]] : event;
  const r = c.repeat;
  parent[path[path.length - 1]] = r
    ? (r.before || "") + r.text.repeat(r.times) + (r.after || "")
    : c.value;
  // JSON.parse reads 1.0 as 1: JavaScript has one number type, so the case VersionWrittenAsInteger
  // (the schema accepts 1.0) is the number 1 here, which the schema accepts too.
  const accepted = schemas.requested(event);
  if (accepted !== c.schema) {
    failures.push(`${JSON.stringify(c)}: ajv says ${accepted}: ${ajv.errorsText(schemas.requested.errors)}`);
  }
}

const ajvVersion = require("ajv/package.json").version;
if (failures.length > 0) {
  console.error(`ajv ${ajvVersion} disagrees with the expected schema verdicts:\n  ${failures.join("\n  ")}`);
  process.exit(1);
}
console.log(`ajv ${ajvVersion}: the ${edges.length} named edges of tests/schema_edges.json get their schema verdicts; the schemas' examples are valid`);
