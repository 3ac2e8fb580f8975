// Parses an AsyncAPI document with the official parser (@asyncapi/parser, installed by
// `make web-deps`) and prints every diagnostic as one JSON line:
// {"severity": 0-3, "code": ..., "path": [...], "message": ...}. Severity 0 is an error
// (1 warning, 2 information, 3 hint). Exit code 1 when there is any error or the
// document could not be parsed at all, 0 otherwise. Used by tests/broker/test_asyncapi_parser.py.
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const path = process.argv[2];
if (!path) {
  console.error('usage: node asyncapi_parse.mjs FILE');
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(path, 'utf8'), { source: path });
let errors = 0;
for (const d of diagnostics) {
  if (d.severity === 0) errors += 1;
  console.log(JSON.stringify({ severity: d.severity, code: d.code, path: d.path, message: d.message }));
}
console.log(JSON.stringify({ parsed: document !== undefined, errors }));
process.exit(errors > 0 || document === undefined ? 1 : 0);
