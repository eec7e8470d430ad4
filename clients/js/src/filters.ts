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
 * are equal; numbers order as numbers, other text as text.
 */

import type { FilterMap, FilterOperator, FilterValue } from "./protocol.js";

const OPERATORS: ReadonlySet<string> = new Set([
  "eq",
  "neq",
  "lt",
  "lte",
  "gt",
  "gte",
  "in",
  "is",
]);
const NUMBER = /^-?\d+(\.\d+)?$/;
const CLAUSE = /^([A-Za-z_][A-Za-z0-9_]*)=([a-z]+)\.([\s\S]*)$/;

export class FilterError extends Error {
  override name = "FilterError";
}

interface Condition {
  column: string;
  op: FilterOperator;
  keys: (string | null)[];
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

/** An equality map as a Supabase filter string (`user_id=eq.u1,status=in.(a,b)`). */
export function filterToString(filters: FilterMap): string {
  return Object.entries(filters)
    .map(([column, value]) => {
      if (Array.isArray(value)) return `${column}=in.(${value.map(spell).join(",")})`;
      if (value === null) return `${column}=is.null`;
      if (typeof value === "object") {
        const entries = Object.entries(value);
        const [entry] = entries;
        if (entries.length !== 1 || entry === undefined) {
          throw new FilterError(`filter for ${column} must name exactly one operator`);
        }
        const [op, operand] = entry;
        if (!OPERATORS.has(op)) throw new FilterError(`unknown operator ${op} for ${column}`);
        if (op === "in") {
          if (!Array.isArray(operand)) throw new FilterError(`'in' for ${column} needs a list`);
          return `${column}=in.(${operand.map(spell).join(",")})`;
        }
        if (op === "is") return `${column}=is.${operand === null ? "null" : String(operand)}`;
        return `${column}=${op}.${spell(operand as FilterValue)}`;
      }
      return `${column}=eq.${spell(value)}`;
    })
    .join(",");
}

function spell(value: FilterValue | undefined): string {
  if (value === null || value === undefined) {
    throw new FilterError("null can only be matched with is.null");
  }
  const text = typeof value === "string" ? value : String(canonical(value));
  if (text.includes('"')) {
    throw new FilterError(`a filter string cannot carry a double quote: ${JSON.stringify(text)}`);
  }
  return /[,()]/.test(text) || text.trim() !== text || text === "" ? `"${text}"` : text;
}

/**
 * A predicate for `filter`: true / false when the row has every column the
 * filter names, undefined when it lacks one (the server also matched columns
 * of the raw row that the payload may not carry, so the client cannot tell).
 */
export function compileFilter(
  filter: FilterMap | string | undefined | null,
): (row: Record<string, unknown> | null | undefined) => boolean | undefined {
  const conditions = parseFilter(filter);
  return (row) => {
    if (row === null || row === undefined) return false;
    for (const condition of conditions) {
      if (!(condition.column in row)) return undefined;
      if (!test(condition, row[condition.column])) return false;
    }
    return true;
  };
}

export function parseFilter(filter: FilterMap | string | undefined | null): Condition[] {
  if (filter === undefined || filter === null || filter === "") return [];
  if (typeof filter === "string") return splitTopLevel(filter).map(parseClause);
  return Object.entries(filter).map(([column, value]) => fromMapEntry(column, value));
}

function fromMapEntry(column: string, value: FilterMap[string]): Condition {
  if (Array.isArray(value)) return { column, op: "in", keys: value.map(canonical) };
  if (value === null) return { column, op: "is", keys: [null] };
  if (typeof value === "object") {
    const entries = Object.entries(value);
    const [entry] = entries;
    if (entries.length !== 1 || entry === undefined || !OPERATORS.has(entry[0])) {
      throw new FilterError(`filter for ${column} must name exactly one known operator`);
    }
    const [op, operand] = entry as [FilterOperator, FilterValue | FilterValue[]];
    if (op === "in") {
      if (!Array.isArray(operand)) throw new FilterError(`'in' for ${column} needs a list`);
      return { column, op, keys: operand.map(canonical) };
    }
    if (op === "is") return isCondition(column, operand === null ? "null" : String(operand));
    return { column, op, keys: [canonical(operand)] };
  }
  return { column, op: "eq", keys: [canonical(value)] };
}

function isCondition(column: string, word: string): Condition {
  const lower = word.toLowerCase();
  if (lower !== "null" && lower !== "true" && lower !== "false") {
    throw new FilterError(`'is' for ${column} takes null, true or false`);
  }
  return { column, op: "is", keys: [lower === "null" ? null : lower] };
}

function parseClause(clause: string): Condition {
  const match = CLAUSE.exec(clause);
  if (match === null) throw new FilterError(`cannot parse filter clause ${clause}`);
  const [, column = "", op = "", raw = ""] = match;
  if (!OPERATORS.has(op)) throw new FilterError(`unknown operator ${op} in ${clause}`);
  if (op === "in") {
    if (!raw.startsWith("(") || !raw.endsWith(")")) {
      throw new FilterError(`'in' needs a parenthesised list in ${clause}`);
    }
    const inner = raw.slice(1, -1);
    const items = inner.trim() === "" ? [] : splitTopLevel(inner).map(unquote);
    return { column, op: "in", keys: items.map(canonical) };
  }
  if (op === "is") return isCondition(column, raw);
  return { column, op: op as FilterOperator, keys: [canonical(unquote(raw))] };
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

function test(condition: Condition, value: unknown): boolean {
  const key = canonical(value);
  const [first = null] = condition.keys;
  switch (condition.op) {
    case "eq":
      return key !== null && key === first;
    case "neq":
      return key !== null && key !== first;
    case "in":
      return key !== null && condition.keys.includes(key);
    case "is":
      return key === first;
    default:
      if (key === null || first === null) return false;
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
