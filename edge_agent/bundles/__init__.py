"""Signed model bundles: format, keys, signatures, trust store, archive, A/B slots, inbox."""

from edge_agent.bundles._archive import ArchiveLimits, pack_bundle, unpack_bundle
from edge_agent.bundles._config import BundlePaths, BundlesConfig, parse_bundles_config
from edge_agent.bundles._format import (
    BUNDLE_JSON,
    SIGNATURES_DIR,
    BundleManifest,
    ModelFacts,
    agent_version,
    check_admissible,
    load_manifest,
    parse_manifest,
)
from edge_agent.bundles._host import ModelHost
from edge_agent.bundles._inbox import InboxWatcher
from edge_agent.bundles._keys import KeyPair, generate_keypair, key_id, load_public_key
from edge_agent.bundles._manager import BundleInfo, BundleManager, InstallResult
from edge_agent.bundles._signing import (
    SignatureCheck,
    VerificationReport,
    hash_folder,
    sign_bundle,
    verify_bundle,
)
from edge_agent.bundles._store import Pointer, SlotStore
from edge_agent.bundles._truststore import (
    ROLES,
    TrustDocument,
    TrustedKey,
    TrustStore,
    TrustUpdate,
    sign_trust_update,
)
from edge_agent.bundles._upload import UploadHeader, UploadReceiver, UploadSession

__all__ = [
    "BUNDLE_JSON",
    "ROLES",
    "SIGNATURES_DIR",
    "ArchiveLimits",
    "BundleInfo",
    "BundleManager",
    "BundleManifest",
    "BundlePaths",
    "BundlesConfig",
    "InboxWatcher",
    "InstallResult",
    "KeyPair",
    "ModelFacts",
    "ModelHost",
    "Pointer",
    "SignatureCheck",
    "SlotStore",
    "TrustDocument",
    "TrustStore",
    "TrustUpdate",
    "TrustedKey",
    "UploadHeader",
    "UploadReceiver",
    "UploadSession",
    "VerificationReport",
    "agent_version",
    "check_admissible",
    "generate_keypair",
    "hash_folder",
    "key_id",
    "load_manifest",
    "load_public_key",
    "pack_bundle",
    "parse_bundles_config",
    "parse_manifest",
    "sign_bundle",
    "sign_trust_update",
    "unpack_bundle",
    "verify_bundle",
]
