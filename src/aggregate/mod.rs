//! Request aggregation: a composite route calls several upstreams and answers
//! with one JSON document (the Backend-for-Frontend pattern).
//!
//! The three phases:
//! - [`plan`]: the compiled [`AggregatePlan`] (parts in declaration order,
//!   their dependencies checked for cycles, conditions and `for_each`
//!   compiled), built once per config;
//! - [`run`]: the executor, which runs on the shard that received the
//!   request. Every part is polled from one task: independent parts are in
//!   flight together, and a part that depends on others starts as soon as
//!   the last of them completes;
//! - [`compose`](mod@compose): shaping and combining the outcomes into the answer.
//!
//! Beside them, pure pieces and the I/O shell:
//! - [`template`]: the parts' path/query/header/body templates (pure).
//! - [`when`]: conditions of conditional parts (pure).
//! - [`shape`]: target, allow, deny, rename, and combining results (pure).
//! - [`items`]: `for_each` parts: one call per element of an earlier
//!   part's array (bounded concurrency) or one batch call joined back by key.
//! - [`fetch`]: one part's call over the shard's upstream pools.
pub mod compose;
pub mod fetch;
pub mod items;
pub mod plan;
pub mod run;
pub mod shape;
pub mod template;
pub mod when;

pub use compose::{combine_cache_control, compose, Composite};
pub use plan::{
    AggregatePlan, BatchPlan, Each, PartPlan, PlanProblem, MAX_CONCURRENCY, MAX_ITEMS, MAX_PARTS,
};
pub use run::{build_request, serve, Done, Inputs};

/// The header naming the optional parts left out of a 200 answer.
pub const PARTIAL_HEADER: &str = "x-aggregate-partial";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use fetch::PartError;
    use serde_json::Value;

    fn gateway(routes: &str) -> config::Gateway {
        let text = format!(
            "Gateway(listeners: [Listener(name: \"l\", bind: \"127.0.0.1:1\")],
              upstreams: {{ \"a\": Upstream(targets: [\"127.0.0.1:2\"]), \"b\": Upstream(targets: [\"127.0.0.1:3\"]) }},
              routes: [{routes}])"
        );
        let options = ron::Options::default().with_default_extension(
            ron::extensions::Extensions::IMPLICIT_SOME
                | ron::extensions::Extensions::UNWRAP_VARIANT_NEWTYPES,
        );
        options.from_str(&text).unwrap()
    }

    fn plan(parts: &str, merge: &str) -> Result<AggregatePlan, Vec<PlanProblem>> {
        let g = gateway(&format!(
            "Route(name: \"r\", match: Match(path: \"/d/{{id}}\"), aggregate: Aggregate(parts: [{parts}], merge: {merge}))"
        ));
        let a = g.routes[0].aggregate.clone().unwrap();
        let names: Vec<String> = g.upstreams.keys().cloned().collect();
        AggregatePlan::compile(
            &a,
            &["id".into()],
            &|n| names.iter().position(|k| k == n),
            false,
        )
    }

    #[test]
    fn dependencies_from_after_and_templates() {
        let p = plan(
            r#"Part(name: "x", upstream: "a", path: "/x/{id}"),
               Part(name: "y", upstream: "b", path: "/y/{x.0.id}"),
               Part(name: "z", upstream: "a", path: "/z", after: "y")"#,
            "UnderKeys",
        )
        .unwrap();
        assert_eq!(p.parts[0].deps, Vec::<usize>::new());
        assert_eq!(p.parts[1].deps, vec![0]);
        assert_eq!(p.parts[2].deps, vec![1]);
        assert_eq!(p.parts[1].upstream, 1);
    }

    #[test]
    fn cycles_and_unknown_references_are_reported() {
        let e = plan(
            r#"Part(name: "x", upstream: "a", path: "/x/{y.id}"),
               Part(name: "y", upstream: "a", path: "/y", after: "x"),
               Part(name: "w", upstream: "nope", path: "/w", after: "ghost"),
               Part(name: "v", upstream: "a", path: "/v/{ghost.id}/{claims.sub}")"#,
            "UnderKeys",
        )
        .unwrap_err();
        let msgs: Vec<String> = e
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        let has = |s: &str| msgs.iter().any(|m| m.contains(s));
        assert!(
            has("parts[0].path: dependency cycle: x → y → x"),
            "{msgs:?}"
        );
        assert!(
            has("parts[2].upstream: unknown upstream \"nope\""),
            "{msgs:?}"
        );
        assert!(has("parts[2].after: unknown part \"ghost\""), "{msgs:?}");
        assert!(
            has("parts[3].path: {ghost.id} refers to unknown part"),
            "{msgs:?}"
        );
        let self_ref = plan(
            r#"Part(name: "x", upstream: "a", path: "/x", after: "x")"#,
            "Merge",
        )
        .unwrap_err();
        assert!(self_ref[0].message.contains("x → x"));
    }

    #[test]
    fn claims_need_an_authenticated_route() {
        let e = plan(
            r#"Part(name: "x", upstream: "a", path: "/x/{claims.sub}")"#,
            "Merge",
        )
        .unwrap_err();
        assert!(e[0].message.contains("auth"));
    }

    #[test]
    fn errors_field_cannot_be_a_part_key() {
        let e = plan(
            r#"Part(name: "x", upstream: "a", path: "/x", group: "_errors")"#,
            "UnderKeys",
        )
        .unwrap_err();
        assert_eq!(e[0].field, "errors_field");
    }

    #[test]
    fn too_many_parts() {
        let parts: Vec<String> = (0..=MAX_PARTS)
            .map(|i| format!("Part(name: \"p{i}\", upstream: \"a\", path: \"/\")"))
            .collect();
        let e = plan(&parts.join(","), "UnderKeys").unwrap_err();
        assert!(e[0].message.contains("at most"));
    }

    #[test]
    fn compose_partial_and_required_failures() {
        let p = plan(
            r#"Part(name: "x", upstream: "a", path: "/x", allow: ["id"]),
               Part(name: "y", upstream: "b", path: "/y", required: false),
               Part(name: "z", upstream: "b", path: "/z", required: false, group: "x")"#,
            "UnderKeys",
        )
        .unwrap();
        let ok = |v: Value| Ok(Done::from(v));
        let c = compose(
            &p,
            vec![
                ok(serde_json::json!({"id": 1, "secret": 2})),
                Err(PartError::new("status 500")),
                ok(serde_json::json!({"more": true})),
            ],
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"x": {"id": 1, "more": true}, "_errors": {"y": "status 500"}})
        );
        assert_eq!(c.partial, vec!["y"]);
        let e = compose(
            &p,
            vec![
                Err(PartError::timed_out("timeout after 5 ms")),
                ok(Value::Null),
                ok(Value::Null),
            ],
        )
        .unwrap_err();
        assert_eq!(e.status(), 504);
        assert!(e.message().contains("\"x\""));
    }
}
