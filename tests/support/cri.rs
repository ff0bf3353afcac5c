//! A blocking CRI v1 client over containerd's unix socket: the calls a kubelet makes to start
//! and tear down a pod, each one panicking with the runtime's answer when it fails (this is
//! test setup), plus `try_` forms for cleanup paths that must not panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, Image, ImageSpec, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListImagesRequest, ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PullImageRequest, RemoveImageRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest, VersionRequest,
};

use tonic::transport::{Channel, Endpoint};

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Pods' log directories are `<log_root>/<namespace>_<name>_<uid>`, as the kubelet's
    /// `/var/log/pods` layout.
    log_root: PathBuf,
}

impl Cri {
    pub fn connect(socket: &Path, log_root: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let channel = rt
            .block_on(
                Endpoint::from_static("http://[::]:50051")
                    .connect_timeout(Duration::from_secs(10))
                    .connect_with_connector(imagecache::unix_grpc::UnixConnector(
                        socket.to_owned(),
                    )),
            )
            .unwrap_or_else(|e| panic!("CRI connect to {}: {e}", socket.display()));
        Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            log_root: log_root.to_owned(),
        }
    }

    /// The runtime's name and version, e.g. ("containerd", "1.6.20~ds1").
    pub fn version(&self) -> (String, String) {
        let mut c = self.runtime.clone();
        let v = self
            .rt
            .block_on(c.version(VersionRequest {
                version: "v1".into(),
            }))
            .unwrap_or_else(|e| panic!("CRI Version: {e}"))
            .into_inner();
        (v.runtime_name, v.runtime_version)
    }

    /// The sandbox config the kubelet would send for a host-network pod: no hostname (runc
    /// refuses one without a private UTS namespace), logs under this client's log root.
    pub fn pod_config(&self, name: &str, uid: &str, namespace: &str) -> PodSandboxConfig {
        let log_directory = self.log_root.join(format!("{namespace}_{name}_{uid}"));
        std::fs::create_dir_all(&log_directory).unwrap();
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox of `pod_config(name, uid, namespace)`; the sandbox id.
    pub fn run_pod_sandbox(&self, name: &str, uid: &str, namespace: &str) -> String {
        self.run_pod_sandbox_with(&self.pod_config(name, uid, namespace))
    }

    pub fn run_pod_sandbox_with(&self, config: &PodSandboxConfig) -> String {
        self.try_run_pod_sandbox_with(config)
            .unwrap_or_else(|e| panic!("CRI RunPodSandbox: {e}"))
    }

    /// RunPodSandbox, returning containerd's error instead of panicking on it.
    pub fn try_run_pod_sandbox_with(
        &self,
        config: &PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        Ok(self
            .rt
            .block_on(c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))?
            .into_inner()
            .pod_sandbox_id)
    }

    /// PullImage; the image reference the runtime answers (its image id).
    pub fn pull_image(&self, image: &str) -> String {
        self.try_pull_image(image)
            .unwrap_or_else(|e| panic!("CRI PullImage {image}: {e}"))
    }

    pub fn try_pull_image(&self, image: &str) -> Result<String, tonic::Status> {
        self.try_pull_image_as(image, None)
    }

    /// PullImage with the registry credentials `(user, password)` a pod's pull secret gives.
    pub fn try_pull_image_as(
        &self,
        image: &str,
        user: Option<(&str, &str)>,
    ) -> Result<String, tonic::Status> {
        let mut c = self.images.clone();
        Ok(self
            .rt
            .block_on(c.pull_image(PullImageRequest {
                image: Some(image_spec(image)),
                auth: user.map(|(username, password)| k8s_cri::v1::AuthConfig {
                    username: username.into(),
                    password: password.into(),
                    ..Default::default()
                }),
                sandbox_config: None,
            }))?
            .into_inner()
            .image_ref)
    }

    /// CreateContainer in pod `pod_id`; `log_path` is relative to the pod's log directory
    /// (the kubelet uses "<container>/<restart count>.log"). The container id.
    #[allow(clippy::too_many_arguments)]
    pub fn create_container(
        &self,
        pod_id: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        image: &str,
        command: &[&str],
        args: &[&str],
        annotations: &[(&str, &str)],
        log_path: &str,
    ) -> String {
        self.try_create_container(
            pod_id,
            pod_config,
            name,
            image,
            command,
            args,
            annotations,
            log_path,
        )
        .unwrap_or_else(|e| panic!("CRI CreateContainer {name} ({image}): {e}"))
    }

    /// CreateContainer, returning containerd's error instead of panicking on it.
    #[allow(clippy::too_many_arguments)]
    pub fn try_create_container(
        &self,
        pod_id: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        image: &str,
        command: &[&str],
        args: &[&str],
        annotations: &[(&str, &str)],
        log_path: &str,
    ) -> Result<String, tonic::Status> {
        let config = container_config(name, image, command, args, annotations, log_path);
        self.try_create_container_with(pod_id, pod_config, config)
    }

    /// CreateContainer of a whole `config` (a security context, say).
    pub fn try_create_container_with(
        &self,
        pod_id: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        Ok(self
            .rt
            .block_on(c.create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            }))?
            .into_inner()
            .container_id)
    }

    pub fn start_container(&self, id: &str) {
        let mut c = self.runtime.clone();
        self.rt
            .block_on(c.start_container(StartContainerRequest {
                container_id: id.into(),
            }))
            .unwrap_or_else(|e| panic!("CRI StartContainer {id}: {e}"));
    }

    pub fn container_status(&self, id: &str) -> ContainerStatus {
        let mut c = self.runtime.clone();
        self.rt
            .block_on(c.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }))
            .unwrap_or_else(|e| panic!("CRI ContainerStatus {id}: {e}"))
            .into_inner()
            .status
            .unwrap_or_else(|| panic!("CRI ContainerStatus {id}: no status"))
    }

    /// Where a container of the pod with `pod_config` logs, given its relative `log_path`.
    pub fn log_file(pod_config: &PodSandboxConfig, log_path: &str) -> PathBuf {
        Path::new(&pod_config.log_directory).join(log_path)
    }

    pub fn stop_pod_sandbox(&self, id: &str) {
        self.try_stop_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("CRI StopPodSandbox {id}: {e}"));
    }

    pub fn try_stop_pod_sandbox(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.rt.block_on(c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        }))?;
        Ok(())
    }

    pub fn remove_pod_sandbox(&self, id: &str) {
        self.try_remove_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("CRI RemovePodSandbox {id}: {e}"));
    }

    pub fn try_remove_pod_sandbox(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.rt
            .block_on(c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))?;
        Ok(())
    }

    /// Ids of every pod sandbox the runtime knows (empty if it does not answer).
    pub fn list_pod_sandboxes(&self) -> Vec<String> {
        let mut c = self.runtime.clone();
        match self
            .rt
            .block_on(c.list_pod_sandbox(ListPodSandboxRequest { filter: None }))
        {
            Ok(r) => r.into_inner().items.into_iter().map(|p| p.id).collect(),
            Err(e) => {
                eprintln!("CRI ListPodSandbox: {e}");
                Vec::new()
            }
        }
    }

    pub fn remove_image(&self, image: &str) {
        let mut c = self.images.clone();
        self.rt
            .block_on(c.remove_image(RemoveImageRequest {
                image: Some(image_spec(image)),
            }))
            .unwrap_or_else(|e| panic!("CRI RemoveImage {image}: {e}"));
    }

    /// ImageStatus: the image, or `None` when the runtime has none of that name.
    pub fn try_image_status(&self, image: &str) -> Result<Option<Image>, tonic::Status> {
        let mut c = self.images.clone();
        Ok(self
            .rt
            .block_on(c.image_status(k8s_cri::v1::ImageStatusRequest {
                image: Some(image_spec(image)),
                verbose: false,
            }))?
            .into_inner()
            .image)
    }

    pub fn try_remove_image(&self, image: &str) -> Result<(), tonic::Status> {
        let mut c = self.images.clone();
        self.rt.block_on(c.remove_image(RemoveImageRequest {
            image: Some(image_spec(image)),
        }))?;
        Ok(())
    }

    /// ImageFsInfo: the mountpoints of the filesystems images are kept on.
    pub fn image_fs_mountpoints(&self) -> Vec<String> {
        let mut c = self.images.clone();
        let info = self
            .rt
            .block_on(c.image_fs_info(k8s_cri::v1::ImageFsInfoRequest {}))
            .unwrap_or_else(|e| panic!("CRI ImageFsInfo: {e}"))
            .into_inner();
        info.image_filesystems
            .into_iter()
            .filter_map(|f| f.fs_id.map(|id| id.mountpoint))
            .collect()
    }

    pub fn list_images(&self) -> Vec<Image> {
        let mut c = self.images.clone();
        self.rt
            .block_on(c.list_images(ListImagesRequest { filter: None }))
            .unwrap_or_else(|e| panic!("CRI ListImages: {e}"))
            .into_inner()
            .images
    }
}

fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// The messages of a CRI log file (`<RFC3339Nano> <stream> <P|F> <message>` lines), with
/// partial ('P') lines joined to the full line that ends them. Missing file: no lines.
pub fn container_log(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut partial = String::new();
    // Only newline-terminated records are complete; the last one may still be being written.
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for line in complete.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_time, _stream, tag) = (parts.next(), parts.next(), parts.next());
        let msg = parts.next().unwrap_or("");
        partial.push_str(msg);
        if tag != Some("P") {
            out.push(std::mem::take(&mut partial));
        }
    }
    out
}

/// Waits until the container log at `path` holds a full line; returns the first one.
pub fn wait_log_line(path: &Path, deadline: Duration) -> String {
    let end = Instant::now() + deadline;
    loop {
        if let Some(first) = container_log(path).into_iter().next() {
            return first;
        }
        if Instant::now() > end {
            panic!(
                "no log line in {} within {deadline:?} (file: {:?})",
                path.display(),
                std::fs::read_to_string(path).ok()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until a full line of the container log satisfies `want`; returns it.
pub fn wait_log_match(path: &Path, deadline: Duration, want: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + deadline;
    loop {
        if let Some(line) = container_log(path).into_iter().find(|l| want(l)) {
            return line;
        }
        if Instant::now() > end {
            panic!(
                "no matching log line in {} within {deadline:?}; lines: {:?}",
                path.display(),
                container_log(path)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A container's config as `Cri::create_container` sends it; change fields before
/// `Cri::try_create_container_with` for more.
pub fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    args: &[&str],
    annotations: &[(&str, &str)],
    log_path: &str,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        log_path: log_path.into(),
        ..Default::default()
    }
}
