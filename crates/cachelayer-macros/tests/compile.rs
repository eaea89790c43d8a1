//! Compile-time behaviour of `#[cached]`: what must compile, and misuse that must fail with
//! a clear message at the right place (the expected messages are the `.stderr` files).

#[test]
fn cached_compiles_where_it_should_and_explains_misuse() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
