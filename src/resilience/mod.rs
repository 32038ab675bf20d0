//! Containing failing and slow backends: target health (active checks and
//! outlier ejection, decided host-wide on the control side) and balancing
//! (weights, peak EWMA, consistent hashing).

pub mod balance;
pub mod health;
pub mod outlier;
pub mod targets;

#[cfg(test)]
mod tests {
    fn problems(upstream: &str) -> String {
        let text = format!(
            "Gateway(listeners: [Listener(name: \"main\", bind: \"127.0.0.1:0\")],
              upstreams: {{ \"app\": {upstream} }},
              routes: [Route(name: \"all\", match: Match(path_prefix: \"/\"), upstream: \"app\")])"
        );
        match crate::config::parse("t.ron", &text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_settings_are_reported_with_their_field() {
        let t = "targets: [\"127.0.0.1:9001\"]";
        assert_eq!(
            problems(&format!(
                "Upstream({t}, weights: {{\"127.0.0.1:9001\": 5}})"
            )),
            ""
        );
        let e = problems(&format!(
            "Upstream({t}, weights: {{\"127.0.0.1:9009\": 5}})"
        ));
        assert!(
            e.contains("upstreams.app.weights") && e.contains("not one of the targets"),
            "{e}"
        );
        let e = problems(&format!(
            "Upstream({t}, weights: {{\"127.0.0.1:9001\": 0}})"
        ));
        assert!(e.contains("must be 1 to 1000"), "{e}");
        let e = problems(&format!(
            "Upstream({t}, health_check: Some(HealthCheck(path: \"health\", interval_ms: 1, healthy_threshold: 0)))"
        ));
        assert!(e.contains("upstreams.app.health_check"), "{e}");
        assert!(
            e.contains("start with /") && e.contains("interval_ms") && e.contains("threshold"),
            "{e}"
        );
        let e = problems(&format!(
            "Upstream({t}, outlier_detection: Some(OutlierDetection(consecutive_5xx: 0, consecutive_connect_failures: 0, max_ejection_percent: 101)))"
        ));
        assert!(e.contains("upstreams.app.outlier_detection"), "{e}");
        assert!(
            e.contains("consecutive_5xx") && e.contains("max_ejection_percent"),
            "{e}"
        );
        let e = problems(&format!(
            "Upstream({t}, balance: ConsistentHash(Header(\"bad name\")))"
        ));
        assert!(e.contains("upstreams.app.balance"), "{e}");
        assert_eq!(
            problems(&format!(
                "Upstream({t}, balance: ConsistentHash(Cookie(\"sid\")))"
            )),
            ""
        );
        assert_eq!(
            problems(&format!(
                "Upstream({t}, balance: PeakEwma, panic_routing: true)"
            )),
            ""
        );
    }
}
