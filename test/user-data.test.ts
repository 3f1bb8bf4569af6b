import { fillPlaceholders, fillUserData, isSafeValue, unknownPlaceholders, UnsafeValueError, PLACEHOLDERS } from "../services/subscriptions/user-data";
import { ARCADIA_APP_USER_DATA } from "../migrations/Migration20261202006000_catalog";

const values = { slug: "shop", hostname: "shop.acme.apps.arcadia.test", llm_mode: "byok", tenant_id: "acme" };

test("every placeholder is filled, every occurrence", () => {
  const out = fillUserData("a={{slug}} b={{hostname}} c={{llm_mode}} d={{tenant_id}} again={{slug}}", values);
  expect(out).toBe("a=shop b=shop.acme.apps.arcadia.test c=byok d=acme again=shop");
});

test("a value that spells a placeholder is not filled again (one pass)", () => {
  // fillPlaceholders is the unchecked pass; even there a value is never scanned.
  const out = fillPlaceholders("x={{tenant_id}} y={{slug}}", { ...values, tenant_id: "{{slug}}", slug: "{{hostname}}" });
  expect(out).toBe("x={{slug}} y={{hostname}}");
});

test("values that could break out of YAML or a shell line, or spell a placeholder, are refused", () => {
  for (const bad of ["a b", "x\nruncmd: [rm]", "{{slug}}", "a\"b", "a'b", "$(id)", "a`b`", "#c", "-x", "", "a\\b", "x".repeat(254)]) {
    expect(isSafeValue(bad)).toBe(false);
    expect(() => fillUserData("{{tenant_id}}", { ...values, tenant_id: bad })).toThrow(UnsafeValueError);
  }
  for (const ok of ["acme", "org_2abc", "9f0c2a4e-1b2c-4d5e-8f90-123456789abc", "a.b:c@d+e", "x".repeat(253)]) expect(isSafeValue(ok)).toBe(true);
});

test("other brace text (cloud-init jinja) is left alone; bare unknown names are reported", () => {
  const t = "## template: jinja\n{{ v1.region }} {{slug}} {{tenant}} {{ hostname }} {{hostnme}} {{tenant}}";
  expect(fillPlaceholders(t, values)).toBe("## template: jinja\n{{ v1.region }} shop {{tenant}} {{ hostname }} {{hostnme}} {{tenant}}");
  expect(unknownPlaceholders(t)).toEqual(["tenant", "hostnme"]);
  expect(unknownPlaceholders("{{slug}}{{hostname}}{{llm_mode}}{{tenant_id}}")).toEqual([]);
});

test("the demo arcadia-app template uses all four placeholders and nothing unknown", () => {
  for (const p of PLACEHOLDERS) expect(ARCADIA_APP_USER_DATA).toContain(`{{${p}}}`);
  expect(unknownPlaceholders(ARCADIA_APP_USER_DATA)).toEqual([]);
  const out = fillUserData(ARCADIA_APP_USER_DATA, values);
  expect(out).not.toMatch(/\{\{(slug|hostname|llm_mode|tenant_id)\}\}/);
  expect(out.startsWith("#cloud-config\n")).toBe(true);
  expect(out).toContain("ARCADIA_TENANT_ID=acme");
  expect(out).toContain("fqdn: shop.acme.apps.arcadia.test");
});
