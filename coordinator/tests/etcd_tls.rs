//! etcd over TLS with client certificates, against a real etcd (the test
//! etcd serves TLS only and demands a client certificate its CA signed):
//! clients without the right certificate are refused, and every refusal is
//! a clear [`EtcdConnectError`] saying who refused whom, not a transport
//! dump.

mod support;

use std::time::Duration;
use support::etcd::EtcdServer;
use tessera_coordinator::etcd::ClientCert;
use tessera_coordinator::store::ClusterStore;
use tessera_coordinator::{EtcdConnectError, EtcdStore, EtcdTls};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn refused(etcd: &EtcdServer, endpoint: String, tls: Option<&EtcdTls>) -> EtcdConnectError {
    match EtcdStore::connect(&[endpoint], tls, CONNECT_TIMEOUT).await {
        Ok(_) => panic!("etcd accepted {tls:?}"),
        Err(e) => {
            eprintln!("{e}");
            assert!(etcd_alive(etcd).await, "etcd died");
            e
        }
    }
}

/// The right client still gets in (the refusals were not etcd breaking).
async fn etcd_alive(etcd: &EtcdServer) -> bool {
    match EtcdStore::connect(&etcd.endpoints(), Some(&etcd.tls()), CONNECT_TIMEOUT).await {
        Ok(store) => store
            .put("/tls-test/alive", b"1".to_vec(), None)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_refuses_clients_without_a_certificate_it_trusts() {
    let etcd = EtcdServer::start();
    let right = etcd.tls();
    let foreign = etcd.foreign_pki();

    // TLS, but no client certificate.
    let no_cert = EtcdTls {
        ca: right.ca.clone(),
        client: None,
    };
    let err = refused(&etcd, etcd.client_url(), Some(&no_cert)).await;
    assert!(
        matches!(err, EtcdConnectError::Tls { .. })
            && err
                .to_string()
                .contains("etcd wants a client certificate, and none was given"),
        "{err}"
    );

    // A client certificate another CA signed.
    let stranger = EtcdTls {
        ca: right.ca.clone(),
        client: foreign.client.clone(),
    };
    let err = refused(&etcd, etcd.client_url(), Some(&stranger)).await;
    let cert = foreign.client.as_ref().unwrap().cert.display().to_string();
    assert!(
        matches!(err, EtcdConnectError::Tls { .. })
            && err
                .to_string()
                .contains(&format!("etcd refused our client certificate {cert}")),
        "{err}"
    );

    // No TLS at all: plaintext to the TLS port.
    let plain = format!("http://127.0.0.1:{}", etcd.client_port());
    let err = refused(&etcd, plain, None).await;
    assert!(
        matches!(err, EtcdConnectError::Tls { .. })
            && err.to_string().contains("etcd serves TLS here"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_an_etcd_its_ca_did_not_sign() {
    let etcd = EtcdServer::start();
    let right = etcd.tls();
    let foreign = etcd.foreign_pki();
    let wrong_ca = EtcdTls {
        ca: foreign.ca.clone(),
        client: right.client.clone(),
    };
    let err = refused(&etcd, etcd.client_url(), Some(&wrong_ca)).await;
    assert!(
        matches!(err, EtcdConnectError::Tls { .. })
            && err.to_string().contains(&format!(
                "etcd's certificate is not signed by the CA in {}",
                foreign.ca.display()
            )),
        "{err}"
    );
}

/// Mistakes in the settings are found before any connection, naming the
/// file or the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_are_checked_before_connecting() {
    let etcd = EtcdServer::start();
    let right = etcd.tls();
    let foreign = etcd.foreign_pki();
    let connect = |endpoint: String, tls: Option<EtcdTls>| async move {
        EtcdStore::connect(&[endpoint], tls.as_ref(), CONNECT_TIMEOUT)
            .await
            .expect_err("refused")
    };

    let missing = EtcdTls {
        client: Some(ClientCert {
            cert: "/nonexistent/client.pem".into(),
            key: right.client.as_ref().unwrap().key.clone(),
        }),
        ..right.clone()
    };
    let err = connect(etcd.client_url(), Some(missing)).await;
    assert!(
        matches!(err, EtcdConnectError::File { .. })
            && err
                .to_string()
                .starts_with("cannot use the etcd client certificate /nonexistent/client.pem: "),
        "{err}"
    );

    // A key that belongs to another certificate.
    let mismatched = EtcdTls {
        client: Some(ClientCert {
            cert: right.client.as_ref().unwrap().cert.clone(),
            key: foreign.client.as_ref().unwrap().key.clone(),
        }),
        ..right.clone()
    };
    let err = connect(etcd.client_url(), Some(mismatched)).await;
    assert!(
        matches!(err, EtcdConnectError::File { .. })
            && err
                .to_string()
                .contains("does not belong to the certificate"),
        "{err}"
    );

    // A certificate where the CA should be.
    let not_a_ca = EtcdTls {
        ca: right.client.as_ref().unwrap().key.clone(),
        ..right.clone()
    };
    let err = connect(etcd.client_url(), Some(not_a_ca)).await;
    assert!(
        matches!(err, EtcdConnectError::File { .. })
            && err.to_string().contains("the etcd CA certificate"),
        "{err}"
    );

    // https:// without TLS settings, TLS settings with http://.
    let err = connect(etcd.client_url(), None).await;
    assert!(
        matches!(err, EtcdConnectError::Settings(_)) && err.to_string().contains("https://"),
        "{err}"
    );
    let plain = format!("http://127.0.0.1:{}", etcd.client_port());
    let err = connect(plain, Some(right.clone())).await;
    assert!(
        matches!(err, EtcdConnectError::Settings(_)) && err.to_string().contains("use https://"),
        "{err}"
    );

    // host:port means https:// when TLS settings are given.
    let bare = format!("127.0.0.1:{}", etcd.client_port());
    let store = EtcdStore::connect(&[bare], Some(&right), CONNECT_TIMEOUT)
        .await
        .expect("host:port with TLS");
    assert_eq!(store.endpoints(), [etcd.client_url()]);
}
