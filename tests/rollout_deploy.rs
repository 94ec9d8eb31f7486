//! The progressive-delivery examples in `deploy/progressive`, checked offline: the YAML
//! parses (PyYAML, which `.ci/run` installs with kubernetes-validate; the CRDs are not
//! known to kubernetes-validate) and the fields that gate a canary point at abgate's
//! verdict endpoint and read it the way the router answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use std::process::Command;
use support::*;

/// Every document of a YAML file, as JSON.
fn documents(name: &str) -> Vec<Value> {
    let path = repo().join("deploy").join("progressive").join(name);
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("python3 with PyYAML is needed ({e})"));
    assert!(
        out.status.success(),
        "{} does not parse: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const VERDICT: &str = "/api/experiment/verdict?arm=";

#[test]
#[ignore = "needs python3 with PyYAML (installed with kubernetes-validate by .ci/run)"]
fn the_argo_rollouts_analysis_template_reads_the_verdict() {
    let docs = documents("argo-rollouts-analysistemplate.yaml");
    assert_eq!(docs.len(), 1);
    let t = &docs[0];
    assert_eq!(t["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(t["kind"], "AnalysisTemplate");
    assert_eq!(t["metadata"]["namespace"], "abgate");
    let args: Vec<&str> = t["spec"]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(args, ["arm", "router"]);
    let router = t["spec"]["args"][1]["value"].as_str().unwrap();
    assert_eq!(router, "http://router.abgate.svc.cluster.local:8080");
    let m = &t["spec"]["metrics"][0];
    let web = &m["provider"]["web"];
    assert_eq!(
        web["url"],
        format!("{{{{args.router}}}}{VERDICT}{{{{args.arm}}}}")
    );
    assert_eq!(web["jsonPath"], "{$.verdict}");
    assert_eq!(m["successCondition"], "result == \"pass\"");
    assert_eq!(m["failureCondition"], "result == \"fail\"");
    assert_eq!(m["failureLimit"], 0);
    // Waiting is not failing: inconclusive measurements are tolerated up to the count.
    assert!(m["inconclusiveLimit"].as_u64().unwrap() < m["count"].as_u64().unwrap());
}

#[test]
#[ignore = "needs python3 with PyYAML (installed with kubernetes-validate by .ci/run)"]
fn the_flagger_metric_template_and_webhook_gate_on_abgate() {
    let docs = documents("flagger-metrictemplate.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["MetricTemplate", "Canary"]);
    for d in &docs {
        assert_eq!(d["apiVersion"], "flagger.app/v1beta1");
    }
    let template = &docs[0];
    assert_eq!(template["spec"]["provider"]["type"], "prometheus");
    let query = template["spec"]["query"].as_str().unwrap();
    assert!(
        query.contains(
            "abgate_comparison_ci_high{metric=\"error_rate\", variant=\"{{ variables.arm }}\"}"
        ),
        "{query}"
    );
    let analysis = &docs[1]["spec"]["analysis"];
    let metric = &analysis["metrics"][0];
    assert_eq!(metric["templateRef"]["name"], template["metadata"]["name"]);
    assert_eq!(metric["templateVariables"]["arm"], "candidate_model");
    assert!(metric["thresholdRange"]["max"].as_f64().unwrap() > 0.0);
    let hook = &analysis["webhooks"][0];
    assert_eq!(hook["type"], "confirm-promotion");
    let cmd = hook["metadata"]["cmd"].as_str().unwrap();
    assert!(
        cmd.contains(&format!(
            "router.abgate.svc.cluster.local:8080{VERDICT}candidate_model"
        )),
        "{cmd}"
    );
    // The router's JSON is compact: this is how a pass reads.
    assert!(cmd.contains("grep -q '\"verdict\":\"pass\"'"), "{cmd}");
}

#[test]
fn the_examples_name_the_router_service_of_the_kubernetes_manifests() {
    let manifest =
        std::fs::read_to_string(repo().join("deploy/kubernetes/base/router.yaml")).unwrap();
    assert!(manifest.contains("kind: Service\nmetadata:\n  name: router\n"));
    assert!(manifest.contains("port: 8080"));
    let ns = std::fs::read_to_string(repo().join("deploy/kubernetes/base/namespace.yaml")).unwrap();
    assert!(ns.contains("name: abgate"));
}
