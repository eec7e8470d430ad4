/**
 * Filters on the client side, with the server's semantics:
 *
 * - `filterToString` spells an equality map as a Supabase filter string, for
 *   the long-poll endpoint (which takes `?filter=` as a string);
 * - `compileFilter` tests a payload against a filter, so that state keyed by
 *   id can drop a row whose UPDATE moved it out of the filter (the server
 *   delivers such an UPDATE precisely so the client learns it left).
 *
 * Values compare in the server's canonical text form: `5`, `5.0` and `"5"`
 * are equal; numbers order as numbers, other text as text. The operators are
 * the server's: eq, neq, lt, lte, gt, gte, in, is (null, true, false,
 * unknown), like and ilike (`*` or `%`, `_`, `\` escapes), each negatable
 * with `not.` (map form: `{ not: ... }`), with SQL's NULL rules.
 */

import type { FilterCondition, FilterMap, FilterOperator, FilterValue } from "./protocol.js";

const OPERATORS: ReadonlySet<string> = new Set([
  "eq",
  "neq",
  "lt",
  "lte",
  "gt",
  "gte",
  "in",
  "is",
  "like",
  "ilike",
]);
const IS_VALUES: ReadonlySet<string> = new Set(["null", "true", "false", "unknown"]);
const NUMBER = /^-?\d+(\.\d+)?$/;
const CLAUSE = /^([A-Za-z_][A-Za-z0-9_]*)=(not\.)?([a-z]+)(\.?)([\s\S]*)$/;

export class FilterError extends Error {
  override name = "FilterError";
}

interface Condition {
  column: string;
  op: FilterOperator;
  keys: (string | null)[];
  negated: boolean;
  pattern?: LikePattern;
}

/** A row's or a filter's value in the form the server compares. */
export function canonical(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") return canonicalNumber(numberText(value));
  if (typeof value === "bigint") return canonicalNumber(value.toString());
  const text = String(value);
  return NUMBER.test(text) ? canonicalNumber(text) : text;
}

function numberText(value: number): string {
  const text = String(value);
  if (!/e/i.test(text)) return text;
  return value.toLocaleString("en-US", { useGrouping: false, maximumFractionDigits: 20 });
}

function canonicalNumber(text: string): string {
  if (!NUMBER.test(text)) return text;
  const negative = text.startsWith("-");
  const [whole = "0", fraction = ""] = (negative ? text.slice(1) : text).split(".");
  const integer = whole.replace(/^0+(?=\d)/, "");
  const decimals = fraction.replace(/0+$/, "");
  if (decimals === "") return integer === "0" || !negative ? integer : `-${integer}`;
  return `${negative ? "-" : ""}${integer}.${decimals}`;
}

/**
 * `text` lowercased one code point at a time, as Postgres's ILIKE does
 * (a whole-string `toLowerCase` would turn a final Σ into ς, and İ into two).
 */
export function fold(text: string): string {
  let out = "";
  for (const char of text) {
    const lowered = char.toLowerCase();
    out += [...lowered].length === 1 ? lowered : char === "\u0130" ? "i" : char;
  }
  return out;
}

/**
 * A LIKE pattern (`%` any run, `_` one character, `\` escapes), matched in
 * linear time: cut at `%` into fixed-length segments, the first matched at the
 * start, the last at the end, each between at its leftmost place. (One RegExp
 * with `[\s\S]*` per `%` backtracks for ages on `%a%a…%b`.)
 */
interface LikePattern {
  segments: RegExp[];
  lengths: number[];
}

function likePattern(pattern: string, column: string): LikePattern {
  const parts: string[][] = [[]];
  let escaped = false;
  for (const char of pattern) {
    const current = parts[parts.length - 1] ?? [];
    if (escaped) {
      current.push(escapeRegExp(char));
      escaped = false;
    } else if (char === "\\") escaped = true;
    else if (char === "%") parts.push([]);
    else if (char === "_") current.push("[\\s\\S]");
    else current.push(escapeRegExp(char));
  }
  if (escaped) {
    throw new FilterError(`a like pattern for ${column} must not end with the escape character`);
  }
  return {
    segments: parts.map((tokens) => new RegExp(tokens.join(""), "uy")),
    lengths: parts.map((tokens) => tokens.length),
  };
}

function likeMatches(pattern: LikePattern, text: string): boolean {
  const chars = [...text]; // code points, as the pattern's tokens are
  const at = (segment: RegExp, index: number, length: number): boolean => {
    segment.lastIndex = 0;
    return segment.test(chars.slice(index, index + length).join(""));
  };
  const { segments, lengths } = pattern;
  const first = segments[0] as RegExp;
  const firstLength = lengths[0] ?? 0;
  if (segments.length === 1) return chars.length === firstLength && at(first, 0, firstLength);
  const lastLength = lengths[lengths.length - 1] ?? 0;
  const tail = chars.length - lastLength;
  if (tail < firstLength || !at(first, 0, firstLength)) return false;
  if (!at(segments[segments.length - 1] as RegExp, tail, lastLength)) return false;
  let pos = firstLength;
  for (let i = 1; i < segments.length - 1; i++) {
    const length = lengths[i] ?? 0;
    if (length === 0) continue;
    let found = -1;
    for (let start = pos; start + length <= tail; start++) {
      if (at(segments[i] as RegExp, start, length)) {
        found = start;
        break;
      }
    }
    if (found < 0) return false;
    pos = found + length;
  }
  return true;
}

function escapeRegExp(char: string): string {
  return /[\\^$.*+?()[\]{}|/-]/.test(char) ? `\\${char}` : char;
}

/** An equality map as a Supabase filter string (`user_id=eq.u1,status=not.in.(a,b)`). */
export function filterToString(filters: FilterMap): string {
  return Object.entries(filters)
    .map(([column, value]) => {
      if (isNegation(value)) return spellCondition(column, value.not, "not.");
      return spellCondition(column, value, "");
    })
    .join(",");
}

function isNegation(value: FilterMap[string]): value is { not: FilterCondition } {
  return (
    typeof value === "object" &&
    value !== null &&
    !Array.isArray(value) &&
    Object.keys(value).length === 1 &&
    "not" in value
  );
}

function spellCondition(column: string, value: FilterCondition, not: string): string {
  if (Array.isArray(value)) return `${column}=${not}in.(${value.map(spellItem).join(",")})`;
  if (value === null) return `${column}=${not}is.null`;
  if (typeof value === "object") {
    if ("not" in value) throw new FilterError(`filter for ${column} negates twice`);
    const entries = Object.entries(value);
    const [entry] = entries;
    if (entries.length !== 1 || entry === undefined) {
      throw new FilterError(`filter for ${column} must name exactly one operator`);
    }
    const [op, operand] = entry;
    if (!OPERATORS.has(op)) throw new FilterError(`unknown operator ${op} for ${column}`);
    if (op === "in") {
      if (!Array.isArray(operand)) throw new FilterError(`'in' for ${column} needs a list`);
      return `${column}=${not}in.(${operand.map(spellItem).join(",")})`;
    }
    if (op === "is") return `${column}=${not}is.${operand === null ? "null" : String(operand)}`;
    return `${column}=${not}${op}.${spell(operand as FilterValue)}`;
  }
  return `${column}=${not}eq.${spell(value)}`;
}

function spellItem(value: FilterValue): string {
  // In a list an unquoted null is NULL, as in a Postgres array literal.
  return value === null ? "null" : spell(value);
}

function spell(value: FilterValue | undefined): string {
  if (value === null || value === undefined) {
    throw new FilterError("null can only be matched with is.null");
  }
  const text = typeof value === "string" ? value : String(canonical(value));
  if (text.includes('"')) {
    throw new FilterError(`a filter string cannot carry a double quote: ${JSON.stringify(text)}`);
  }
  const quote = /[,()]/.test(text) || text.trim() !== text || text === "";
  return quote || text.toLowerCase() === "null" ? `"${text}"` : text;
}

/**
 * A predicate for `filter`: true / false when the row has every column the
 * filter names, undefined when it lacks one (the server also matched columns
 * of the raw row that the payload may not carry, so the client cannot tell).
 * A row matches when the filter, read as SQL, is true: `not.eq.x` does not
 * match a null (unknown), `not.is.true` does.
 */
export function compileFilter(
  filter: FilterMap | string | undefined | null,
): (row: Record<string, unknown> | null | undefined) => boolean | undefined {
  const conditions = parseFilter(filter);
  return (row) => {
    if (row === null || row === undefined) return false;
    for (const condition of conditions) {
      if (!(condition.column in row)) return undefined;
      const answer = truth(condition, row[condition.column]);
      if (answer === null || answer === condition.negated) return false;
    }
    return true;
  };
}

export function parseFilter(filter: FilterMap | string | undefined | null): Condition[] {
  if (filter === undefined || filter === null || filter === "") return [];
  if (typeof filter === "string") return splitTopLevel(filter).map(parseClause);
  return Object.entries(filter).map(([column, value]) =>
    isNegation(value) ? fromMapEntry(column, value.not, true) : fromMapEntry(column, value, false),
  );
}

function fromMapEntry(column: string, value: FilterCondition, negated: boolean): Condition {
  if (Array.isArray(value)) return { column, op: "in", keys: value.map(canonical), negated };
  if (value === null) return { column, op: "is", keys: [null], negated };
  if (typeof value === "object") {
    if ("not" in value) throw new FilterError(`filter for ${column} negates twice`);
    const entries = Object.entries(value);
    const [entry] = entries;
    if (entries.length !== 1 || entry === undefined || !OPERATORS.has(entry[0])) {
      throw new FilterError(`filter for ${column} must name exactly one known operator`);
    }
    const [op, operand] = entry as [FilterOperator, FilterValue | FilterValue[]];
    if (op === "in") {
      if (!Array.isArray(operand)) throw new FilterError(`'in' for ${column} needs a list`);
      return { column, op, keys: operand.map(canonical), negated };
    }
    if (op === "is") return isCondition(column, operand === null ? "null" : String(operand), negated);
    if (op === "like" || op === "ilike") {
      if (typeof operand !== "string") {
        throw new FilterError(`'${op}' for ${column} needs a pattern string`);
      }
      return likeCondition(column, op, operand, negated);
    }
    return { column, op, keys: [canonical(operand)], negated };
  }
  return { column, op: "eq", keys: [canonical(value)], negated };
}

function likeCondition(
  column: string,
  op: "like" | "ilike",
  operand: string,
  negated: boolean,
): Condition {
  // PostgREST reads `*` as `%`.
  const written = operand.replaceAll("*", "%");
  const pattern = likePattern(op === "ilike" ? fold(written) : written, column);
  return { column, op, keys: [written], negated, pattern };
}

function isCondition(column: string, word: string, negated: boolean): Condition {
  const lower = word.toLowerCase();
  if (!IS_VALUES.has(lower)) {
    throw new FilterError(`'is' for ${column} takes null, true, false or unknown`);
  }
  return { column, op: "is", keys: [lower === "null" ? null : lower], negated };
}

function parseClause(clause: string): Condition {
  const match = CLAUSE.exec(clause);
  if (match === null) throw new FilterError(`cannot parse filter clause ${clause}`);
  const [, column = "", not, op = "", dot, raw = ""] = match;
  if (!OPERATORS.has(op)) throw new FilterError(`unknown operator ${op} in ${clause}`);
  if (dot === "") throw new FilterError(`cannot parse filter clause ${clause}: no value`);
  const negated = not !== undefined;
  if (op === "in") {
    if (!raw.startsWith("(") || !raw.endsWith(")")) {
      throw new FilterError(`'in' needs a parenthesised list in ${clause}`);
    }
    const inner = raw.slice(1, -1);
    const items = inner.trim() === "" ? [] : splitTopLevel(inner).map(listItem);
    return { column, op: "in", keys: items.map(canonical), negated };
  }
  if (op === "is") return isCondition(column, raw, negated);
  if (op === "like" || op === "ilike") return likeCondition(column, op, unquote(raw), negated);
  return { column, op: op as FilterOperator, keys: [canonical(unquote(raw))], negated };
}

function listItem(value: string): string | null {
  return value.trim().toLowerCase() === "null" ? null : unquote(value);
}

function splitTopLevel(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let quoted = false;
  let current = "";
  for (const char of text) {
    if (char === '"') quoted = !quoted;
    else if (!quoted && char === "(") depth += 1;
    else if (!quoted && char === ")") depth -= 1;
    if (char === "," && depth === 0 && !quoted) {
      parts.push(current.trim());
      current = "";
    } else {
      current += char;
    }
  }
  if (depth !== 0 || quoted) throw new FilterError(`unbalanced parenthesis or quote in ${text}`);
  parts.push(current.trim());
  return parts;
}

function unquote(value: string): string {
  const text = value.trim();
  return text.length >= 2 && text.startsWith('"') && text.endsWith('"') ? text.slice(1, -1) : text;
}

/** The un-negated test in SQL's three-valued logic: null is unknown. */
function truth(condition: Condition, value: unknown): boolean | null {
  const key = canonical(value);
  const [first = null] = condition.keys;
  if (condition.op === "is") return first === null || first === "unknown" ? key === null : key === first;
  if (key === null) return null;
  switch (condition.op) {
    case "eq":
      return key === first;
    case "neq":
      return key !== first;
    case "in":
      if (condition.keys.includes(key)) return true;
      return condition.keys.includes(null) ? null : false;
    case "like":
    case "ilike": {
      const text = typeof value === "string" ? value : key;
      const subject = condition.op === "ilike" ? fold(text) : text;
      return condition.pattern !== undefined && likeMatches(condition.pattern, subject);
    }
    default:
      if (first === null) return null;
      return ordered(key, first, condition.op);
  }
}

function ordered(left: string, right: string, op: FilterOperator): boolean {
  const numeric = NUMBER.test(left) && NUMBER.test(right);
  const a: number | string = numeric ? Number(left) : left;
  const b: number | string = numeric ? Number(right) : right;
  if (op === "lt") return a < b;
  if (op === "lte") return a <= b;
  if (op === "gt") return a > b;
  return a >= b;
}
