//! The Kubernetes manifests (deploy/kubernetes), checked offline: `kubectl kustomize`
//! renders them (kubectl 1.20 or later), `kubernetes-validate --strict` accepts every
//! object for Kubernetes 1.30, `promtool` accepts the scrape config, and the rendered
//! objects have the properties an operator relies on (replicas, probes, drain timing,
//! non-root, the config mounted as a directory, headless arm Services the router
//! config names).
//! The router and model-server TOML inside the ConfigMaps go through the real
//! loaders. `.ci/run` installs the tools; without them these tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::*;

const NEEDS: &str = "needs kubectl and kubernetes-validate (installed by .ci/run)";
const KUBERNETES_VERSION: &str = "1.30.0";

fn deploy() -> PathBuf {
    repo().join("deploy").join("kubernetes")
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if input.is_some() {
        command.stdin(std::process::Stdio::piped());
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): {NEEDS}"));
    if let Some(text) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stdout_of(program: &str, args: &[&str], input: Option<&str>) -> String {
    let out = run(program, args, input);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl kustomize deploy/kubernetes/<dir>` as YAML text.
fn render_yaml(dir: &str) -> String {
    let path = deploy().join(dir);
    stdout_of("kubectl", &["kustomize", &path_str(&path)], None)
}

/// The rendered objects as JSON (PyYAML, which kubernetes-validate depends on).
fn objects(yaml: &str) -> Vec<Value> {
    let json = stdout_of(
        "python3",
        &[
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ],
        Some(yaml),
    );
    let parsed: Value = serde_json::from_str(&json).unwrap();
    parsed.as_array().unwrap().clone()
}

fn render(dir: &str) -> Vec<Value> {
    objects(&render_yaml(dir))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the render"))
}

fn all<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Whether `selector` (a matchLabels map) selects pods labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().unwrap();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Validates one render with kubernetes-validate, strict, and checks that every
/// object was actually validated (not skipped for want of a schema).
fn validate(dir: &str) {
    let yaml = render_yaml(dir);
    let count = objects(&yaml).len();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("render.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = run(
        "python3",
        &[
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            &path_str(&file),
        ],
        None,
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{dir}: kubernetes-validate failed:\n{report}"
    );
    let passed = report.matches("passed for resource").count();
    assert_eq!(
        passed, count,
        "{dir}: not every object validated:\n{report}"
    );
    eprintln!("deploy/kubernetes/{dir}: {passed} objects valid for Kubernetes {KUBERNETES_VERSION} (strict)");
}

/// The pod spec of a Deployment.
fn pod(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

/// The one container of a Deployment.
fn container(deployment: &Value) -> &Value {
    let containers = pod(deployment)["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container per pod");
    &containers[0]
}

/// `key: value` of the Dockerfile's `useradd --uid N` and ENTRYPOINT.
fn dockerfile() -> (i64, String) {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let uid = text
        .split("--uid ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("useradd --uid in the Dockerfile");
    let entrypoint = text
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT in the Dockerfile");
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).unwrap();
    (uid, entrypoint[0].clone())
}

/// Checks what every abgate Deployment must have: the image's entrypoint and user,
/// a command line the binary accepts, probes on a real route, a drain that fits in
/// the grace period, a hardened container, scrape annotations, and its config
/// ConfigMap mounted as a directory holding the file the command names. Returns the
/// config file's text.
fn check_deployment(objects: &[Value], deployment: &Value, shutdown_grace_s: f64) -> String {
    let name = str_of(&deployment["metadata"]["name"]).to_string();
    let (uid, entrypoint) = dockerfile();
    let pod = pod(deployment);
    let c = container(deployment);

    // Non-root, read-only root filesystem, nothing to escalate to.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
    assert_eq!(
        pod["securityContext"]["runAsUser"], uid,
        "{name}: the image's user"
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"], true,
        "{name}"
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"], false,
        "{name}"
    );
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"][0], "ALL",
        "{name}"
    );
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string(),
        "{name}: resources"
    );

    // The command line: the image's binary, and arguments it accepts.
    assert_eq!(
        c["command"][0],
        entrypoint.as_str(),
        "{name}: the image's entrypoint"
    );
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(str_of).collect();
    let help = run(abgate(), &[args.as_slice(), &["--help"]].concat(), None);
    assert!(
        help.status.success(),
        "{name}: `abgate {}` is not a command line the binary accepts: {}",
        args.join(" "),
        String::from_utf8_lossy(&help.stderr)
    );
    let config_arg = args
        .iter()
        .position(|a| *a == "--config")
        .map(|i| args[i + 1])
        .unwrap_or_else(|| panic!("{name}: --config"));

    // Probes on routes the process serves, on the container's port.
    let port = &c["ports"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert!(
            get["port"] == port["name"] || get["port"] == port["containerPort"],
            "{name}: {probe} on the serving port"
        );
        assert!(
            ["/api/health", "/v2/health/live"].contains(&str_of(&get["path"])),
            "{name}: {probe} path {}",
            get["path"]
        );
    }
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"], "/api/health",
        "{name}"
    );

    // preStop wait, then the process's own drain, both inside the grace period.
    let pre_stop = &c["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(pre_stop[0], "/bin/sleep", "{name}: a preStop wait");
    let wait: f64 = str_of(&pre_stop[1]).parse().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
    assert!(
        wait >= 1.0 && wait + shutdown_grace_s < grace,
        "{name}: preStop {wait}s + drain {shutdown_grace_s}s must be < grace {grace}s"
    );

    // Prometheus pod discovery.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{name}");
    assert_eq!(
        annotations["prometheus.io/port"],
        port["containerPort"].to_string(),
        "{name}: scrape port"
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics", "{name}");

    // The config: a ConfigMap volume mounted as a directory, never with subPath.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = mounts
        .iter()
        .find(|m| {
            let dir = str_of(&m["mountPath"]).trim_end_matches('/');
            Path::new(config_arg).parent() == Some(Path::new(dir))
        })
        .unwrap_or_else(|| panic!("{name}: no mount holds {config_arg}"));
    assert!(
        mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
        "{name}: the config mount must not use subPath (the kubelet never updates it)"
    );
    assert_eq!(mount["readOnly"], true, "{name}");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(
        volume["configMap"]["items"].is_null(),
        "{name}: every key of the ConfigMap is mounted"
    );
    let configmap = find(objects, "ConfigMap", str_of(&volume["configMap"]["name"]));
    let file = Path::new(config_arg).file_name().unwrap().to_str().unwrap();
    str_of(&configmap["data"][file]).to_string()
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate (installed by .ci/run)"]
fn the_kustomize_base_and_the_example_overlay_render_and_every_object_validates_strictly_for_kubernetes_1_30(
) {
    // The manifests render alike with kubectl 1.20 (Debian's kubernetes-client,
    // kustomize v2.0.3, what .ci/run installs when there is no kubectl) and current
    // ones; the log says which one this run used.
    let version = stdout_of("kubectl", &["version", "--client"], None);
    eprintln!("kubectl: {}", version.lines().next().unwrap_or("").trim());
    for dir in ["", "overlays/example", "grafana", "prometheus"] {
        validate(dir);
    }
    // The operator's PodMonitor is a custom resource (no built-in schema): it must
    // render, and be the Prometheus Operator's kind.
    let monitors = render("prometheus-operator");
    assert_eq!(monitors.len(), 1);
    assert_eq!(monitors[0]["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitors[0]["kind"], "PodMonitor");
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate (installed by .ci/run)"]
fn the_router_runs_several_non_root_replicas_with_probes_a_drain_inside_the_grace_period_and_its_configmap_mounted_as_a_directory(
) {
    let objects = render("");
    let router = find(&objects, "Deployment", "router");
    assert!(router["spec"]["replicas"].as_i64().unwrap() >= 2);
    assert_eq!(
        router["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "a rollout never lowers capacity"
    );
    let text = check_deployment(&objects, router, 10.0);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("router.toml");
    std::fs::write(&file, &text).unwrap();
    // The real loader, and the operator's own check command, accept it.
    let config = abgate_router::RouterConfig::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let check = stdout_of(abgate(), &["check", &path_str(&file)], None);
    assert!(check.contains("configuration is valid"), "{check}");
    // The drain the preStop arithmetic above assumed.
    assert!(config.shutdown_grace.as_secs_f64() <= 10.0);
    assert_eq!(config.listen.port(), 8080);
    let c = container(router);
    assert_eq!(c["ports"][0]["containerPort"], 8080);

    // Its Service, PodDisruptionBudget and autoscaler select / target it.
    let labels = &router["spec"]["template"]["metadata"]["labels"];
    let service = find(&objects, "Service", "router");
    assert!(selects(&service["spec"]["selector"], labels));
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    let pdb = find(&objects, "PodDisruptionBudget", "router");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert!(
        pdb["spec"]["maxUnavailable"].as_i64().unwrap()
            < router["spec"]["replicas"].as_i64().unwrap()
    );
    let hpa = find(&objects, "HorizontalPodAutoscaler", "router");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "router");
    assert!(hpa["spec"]["minReplicas"].as_i64().unwrap() >= 2);
    // Fixed ConfigMap name: an edit updates the mounted files in place (a content
    // hash would roll every pod on each weight change instead of a live reload).
    assert_eq!(
        pod(router)["volumes"][0]["configMap"]["name"],
        "abgate-router"
    );
    eprintln!(
        "router: {} replicas, config {} arms, check: {}",
        router["spec"]["replicas"],
        config.arms.len(),
        check.lines().next().unwrap_or("")
    );
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate (installed by .ci/run)"]
fn every_arm_url_in_the_router_configmap_names_a_headless_service_whose_pods_serve_that_variant_on_that_port(
) {
    let objects = render("");
    let router = find(&objects, "Deployment", "router");
    let text =
        str_of(&find(&objects, "ConfigMap", "abgate-router")["data"]["router.toml"]).to_string();
    let config = abgate_router::RouterConfig::parse(Path::new("router.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let namespace = str_of(&router["metadata"]["namespace"]).to_string();
    assert!(!namespace.is_empty());
    assert!(config.arms.len() >= 2);
    for arm in &config.arms {
        let uri: http::Uri = arm.url.parse().unwrap();
        let host = uri.host().unwrap();
        let port = uri.port_u16().unwrap();
        let service_name = host
            .strip_suffix(&format!(".{namespace}.svc.cluster.local"))
            .unwrap_or_else(|| panic!("{}: {host} is not a Service of {namespace}", arm.name));
        let service = find(&objects, "Service", service_name);
        assert_eq!(
            service["spec"]["clusterIP"], "None",
            "{service_name}: headless"
        );
        assert_eq!(service["spec"]["ports"][0]["port"], port);
        let deployments: Vec<&Value> = all(&objects, "Deployment")
            .into_iter()
            .filter(|d| {
                selects(
                    &service["spec"]["selector"],
                    &d["spec"]["template"]["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(
            deployments.len(),
            1,
            "{service_name} selects one Deployment"
        );
        let deployment = deployments[0];
        assert!(deployment["spec"]["replicas"].as_i64().unwrap() >= 2);
        assert_eq!(
            service["spec"]["ports"][0]["targetPort"],
            container(deployment)["ports"][0]["name"]
        );
        let model_text = check_deployment(&objects, deployment, 10.0);
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join(format!("{}.toml", arm.name));
        std::fs::write(&file, &model_text).unwrap();
        let model = abgate_model_server::ServerConfig::parse(&file, &model_text)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(model.variant, arm.name);
        // Open Inference Protocol: every arm serves the experiment's one model name.
        assert_eq!(model.model_name, "wine-quality", "{}", arm.name);
        assert_eq!(model.listen.port(), port);
        assert_eq!(model.shutdown_grace.as_secs_f64(), 10.0);
        // The image carries models/ at /app/models (Dockerfile: COPY models/).
        let dir = model.model_dir.strip_prefix("/app").unwrap_or_else(|_| {
            panic!(
                "{}: model_dir {} is not in the image",
                arm.name,
                model.model_dir.display()
            )
        });
        assert!(
            repo().join(dir).join("model.json").exists(),
            "{}",
            dir.display()
        );
        let pdb = find(&objects, "PodDisruptionBudget", service_name);
        assert!(selects(
            &pdb["spec"]["selector"]["matchLabels"],
            &deployment["spec"]["template"]["metadata"]["labels"]
        ));
        eprintln!(
            "arm {}: {} -> headless Service {service_name}, {} pods",
            arm.name, arm.url, deployment["spec"]["replicas"]
        );
    }
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate (installed by .ci/run)"]
fn prometheus_discovers_every_pod_by_annotation_and_the_grafana_dashboard_is_the_monitoring_one() {
    let scrape = deploy().join("prometheus").join("prometheus.yml");
    let text = std::fs::read_to_string(&scrape).unwrap();
    // Debian's Prometheus is built without Kubernetes discovery, so promtool checks
    // the file with the discovery block swapped for a static target: everything
    // else (relabelling regexes, targets, job) is checked as written.
    const DISCOVERY: &str = "    kubernetes_sd_configs:\n      - role: pod\n        namespaces:\n          names: [abgate]\n";
    assert!(
        text.contains(DISCOVERY),
        "pod discovery in namespace abgate"
    );
    let tmp = tempfile::tempdir().unwrap();
    let checked = tmp.path().join("prometheus.yml");
    std::fs::write(
        &checked,
        text.replace(
            DISCOVERY,
            "    static_configs:\n      - targets: [\"10.0.0.1:8080\"]\n",
        ),
    )
    .unwrap();
    let out = run("promtool", &["check", "config", &path_str(&checked)], None);
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // `job` comes from the component label: router / model-server, as the
    // dashboards and the local Prometheus config name them.
    assert!(text.contains("__meta_kubernetes_pod_label_app_kubernetes_io_component"));
    let local =
        std::fs::read_to_string(repo().join("monitoring/prometheus/prometheus.yml")).unwrap();
    let objects = render("");
    let monitor = &render("prometheus-operator")[0];
    for d in all(&objects, "Deployment") {
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        let component = str_of(&labels["app.kubernetes.io/component"]);
        assert!(
            local.contains(&format!("job_name: {component}")),
            "{component}"
        );
        assert!(selects(&monitor["spec"]["selector"]["matchLabels"], labels));
        assert_eq!(
            container(d)["ports"][0]["name"],
            monitor["spec"]["podMetricsEndpoints"][0]["port"]
        );
    }
    assert_eq!(monitor["spec"]["jobLabel"], "app.kubernetes.io/component");

    let grafana = render("grafana");
    let dashboard = find(&grafana, "ConfigMap", "abgate-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped =
        std::fs::read_to_string(repo().join("monitoring/grafana/dashboards/ab-testing.json"))
            .unwrap();
    assert_eq!(
        str_of(&dashboard["data"]["ab-testing.json"]),
        shipped,
        "deploy/kubernetes/grafana/ab-testing.json must be a copy of monitoring's dashboard"
    );
    let datasource = find(&grafana, "ConfigMap", "abgate-datasource");
    assert_eq!(datasource["metadata"]["labels"]["grafana_datasource"], "1");
    assert!(
        str_of(&datasource["data"]["abgate-datasource.yaml"]).contains("uid: abgate-prometheus")
    );
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate (installed by .ci/run)"]
fn the_routers_run_in_cluster_mode_against_the_shipped_prometheus_with_a_writable_audit_log() {
    let objects = render("");
    let router = find(&objects, "Deployment", "router");
    let toml_text =
        str_of(&find(&objects, "ConfigMap", "abgate-router")["data"]["router.toml"]).to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.toml");
    std::fs::write(&path, &toml_text).unwrap();
    let config = abgate_router::RouterConfig::load(&path).unwrap();
    let cluster = config
        .analysis
        .cluster
        .clone()
        .expect("experiment.prometheus_url is set: cluster mode on");
    assert!(router["spec"]["replicas"].as_u64().unwrap() >= 3);
    // The URL names the shipped Prometheus Service, on its port, in the namespace.
    let prometheus = render("prometheus");
    let service = find(&prometheus, "Service", "prometheus");
    let namespace = str_of(&service["metadata"]["namespace"]);
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        cluster.prometheus_url,
        format!("http://prometheus.{namespace}.svc.cluster.local:{port}")
    );
    let deployment = find(&prometheus, "Deployment", "prometheus");
    assert!(selects(
        &service["spec"]["selector"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    let args: Vec<&str> = container(deployment)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    // A recorded trip is looked up over 30 days: Prometheus keeps them that long.
    assert!(
        args.contains(&"--storage.tsdb.retention.time=30d"),
        "{args:?}"
    );
    assert!(args.contains(&"--config.file=/etc/prometheus/prometheus.yml"));
    let config_map = find(&prometheus, "ConfigMap", "abgate-prometheus");
    assert!(str_of(&config_map["data"]["prometheus.yml"]).contains("kubernetes_sd_configs"));
    // Prometheus does not scrape itself as an abgate pod (no scrape annotation).
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"].is_null()
    );

    // The audit log on a writable volume (the ConfigMap and the root are read-only).
    let audit = &config.analysis.audit_log;
    let c = container(router);
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| audit.starts_with(str_of(&m["mountPath"])))
        .unwrap_or_else(|| panic!("no mount holds the audit log {}", audit.display()));
    assert_ne!(
        mount["readOnly"], true,
        "the audit log's volume is writable"
    );
    let volume = pod(router)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(volume["emptyDir"].is_object(), "{volume}");
}

#[test]
#[ignore = "needs kubectl and kubernetes-validate (installed by .ci/run)"]
fn the_shipped_rollout_example_is_a_cluster_mode_rollout_and_the_overlay_gives_its_admin_token_from_a_secret(
) {
    let objects = render("overlays/example");
    let text =
        str_of(&find(&objects, "ConfigMap", "abgate-router")["data"]["router.toml"]).to_string();
    // The commented example in the ConfigMap, uncommented as an operator would.
    let (mut inside, mut example) = (false, Vec::new());
    for line in text.lines() {
        if line.contains("--- rollout example ---") {
            inside = true;
        } else if line.contains("--- end of the rollout example ---") {
            inside = false;
        } else if inside {
            example.push(line.trim_start_matches('#').trim_start().to_string());
        }
    }
    assert!(
        example.len() > 8,
        "the example is in router.toml: {example:?}"
    );
    let enabled = format!(
        "{}\n{}\n",
        text.replace("weight = 10\n", "weight = 0\n"),
        example.join("\n")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.toml");
    std::fs::write(&path, &enabled).unwrap();
    let config = abgate_router::RouterConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let rollout = config.rollout.clone().expect("the example has [rollout]");
    assert!(
        config.analysis.cluster.is_some(),
        "cluster mode: one step for every replica"
    );
    assert_eq!(rollout.arm, "candidate_model");
    assert_eq!(rollout.gates, ["candidate_errors"]);
    assert!(rollout.max_exposed_users.is_some());
    // The admin token comes from a Secret, never from the ConfigMap.
    let router = find(&objects, "Deployment", "router");
    let env = container(router)["env"].as_array().unwrap();
    let admin = env
        .iter()
        .find(|e| e["name"] == "ABGATE_ROUTER_ADMIN__TOKEN")
        .unwrap_or_else(|| panic!("no admin token in {env:?}"));
    assert_eq!(admin["valueFrom"]["secretKeyRef"]["name"], "abgate-admin");
    assert!(config.admin.token.is_none(), "no token in the ConfigMap");
}
