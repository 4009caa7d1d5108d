//! Device polling, the seed's chapter 2.1: a master polls several devices with
//! function-code-like methods, reads holding registers, and handles exception answers.
//!
//! A simulated gateway serves three devices (unit ids 1, 2, 3) behind one MCP server. The
//! methods are named after Modbus function codes (`fc03` reads holding registers, `fc06`
//! writes one); a device's exception code `e` comes back as the application ERROR code
//! `1000 + e`, which the master maps to a typed [`DeviceError`]. One client carries every
//! poll, multiplexed on its connections. The service is declared once, in
//! `proto/mcp/examples/v1/device.proto`: the master calls the generated
//! `DeviceGatewayClient`, the gateway implements the generated `DeviceGateway` trait.
//!
//! `cargo run -p mcp-client --example device_polling`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_client::{CallOptions, Client, ErrorKind};
use mcp_proto::examples::v1::device_gateway_client::DeviceGatewayClient;
use mcp_proto::examples::v1::device_gateway_server::{self, DeviceGateway};
use mcp_proto::examples::v1::{Coils, ReadRegisters, Registers, WriteRegister};
use mcp_server::{RequestContext, Router, Server, Status};

/// Application ERROR codes are 1000 + the device's exception code.
const EXCEPTION_BASE: u16 = 1000;

/// Exception codes, as a Modbus device answers them.
mod exception {
    pub(crate) const ILLEGAL_FUNCTION: u16 = 0x01;
    pub(crate) const ILLEGAL_DATA_ADDRESS: u16 = 0x02;
    pub(crate) const ILLEGAL_DATA_VALUE: u16 = 0x03;
    pub(crate) const DEVICE_FAILURE: u16 = 0x04;
    pub(crate) const DEVICE_BUSY: u16 = 0x06;
    pub(crate) const GATEWAY_NO_RESPONSE: u16 = 0x0B;
}

/// What can go wrong polling a device, typed.
#[derive(Debug)]
enum DeviceError {
    IllegalFunction,
    IllegalAddress,
    IllegalValue,
    DeviceFailure,
    Busy,
    NoResponse,
    /// An exception code this master does not know.
    OtherException(u16),
    /// Not the device: the call itself failed (timeout, connection, circuit open, ...).
    Call(mcp_client::Error),
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceError::Call(e) => write!(f, "call failed: {e}"),
            DeviceError::OtherException(code) => write!(f, "device exception {code:#04x}"),
            other => write!(f, "device exception: {other:?}"),
        }
    }
}

impl std::error::Error for DeviceError {}

impl From<mcp_client::Error> for DeviceError {
    fn from(err: mcp_client::Error) -> Self {
        let Some(code) = err.code().filter(|c| c.is_application()) else {
            return DeviceError::Call(err);
        };
        match code.0 - EXCEPTION_BASE {
            exception::ILLEGAL_FUNCTION => DeviceError::IllegalFunction,
            exception::ILLEGAL_DATA_ADDRESS => DeviceError::IllegalAddress,
            exception::ILLEGAL_DATA_VALUE => DeviceError::IllegalValue,
            exception::DEVICE_FAILURE => DeviceError::DeviceFailure,
            exception::DEVICE_BUSY => DeviceError::Busy,
            exception::GATEWAY_NO_RESPONSE => DeviceError::NoResponse,
            other => DeviceError::OtherException(other),
        }
    }
}

/// The polling master: one client, typed requests, typed errors.
struct Master {
    gateway: DeviceGatewayClient,
}

impl Master {
    async fn read_holding_registers(
        &self,
        unit: u8,
        start: u16,
        count: u16,
    ) -> Result<Vec<u16>, DeviceError> {
        // Reads change nothing, so they are idempotent: safe to retry after a lost answer.
        let options = CallOptions::new()
            .timeout(Duration::from_millis(800))
            .idempotent();
        let req = ReadRegisters {
            unit: unit.into(),
            start: start.into(),
            count: count.into(),
        };
        let read = self
            .gateway
            .read_holding_registers_with(&req, options)
            .await?;
        // Registers are 16 bits; a wider value is the gateway's mistake, not a device's.
        read.values
            .into_iter()
            .map(|v| u16::try_from(v).map_err(|_| DeviceError::OtherException(0)))
            .collect()
    }

    async fn read_coils(&self, unit: u8, start: u16, count: u16) -> Result<Vec<bool>, DeviceError> {
        let req = ReadRegisters {
            unit: unit.into(),
            start: start.into(),
            count: count.into(),
        };
        Ok(self.gateway.read_coils(&req).await?.values)
    }

    async fn write_single_register(
        &self,
        unit: u8,
        address: u16,
        value: u16,
    ) -> Result<(), DeviceError> {
        // A write is not marked idempotent: never sent twice once it may have arrived.
        let req = WriteRegister {
            unit: unit.into(),
            address: address.into(),
            value: value.into(),
        };
        self.gateway.write_single_register(&req).await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gateway = Gateway::new();
    let server = gateway.serve().await?;
    let client = Client::builder(server.local_addr()).connect().await?;
    let master = Arc::new(Master {
        gateway: DeviceGatewayClient::new(client.clone()),
    });

    for round in 1..=3 {
        println!("-- poll round {round}");
        // All devices at once over the one client: requests are multiplexed.
        let polls: Vec<_> = [1u8, 2, 3]
            .into_iter()
            .map(|unit| {
                let master = Arc::clone(&master);
                tokio::spawn(async move { (unit, master.read_holding_registers(unit, 0, 4).await) })
            })
            .collect();
        for poll in polls {
            let (unit, result) = poll.await?;
            match result {
                Ok(values) => println!("unit {unit}: registers 0..4 = {values:?}"),
                Err(DeviceError::Busy) => println!("unit {unit}: busy, polled again next round"),
                Err(DeviceError::NoResponse) => {
                    println!("unit {unit}: no response through the gateway")
                }
                Err(DeviceError::Call(e)) if e.kind() == ErrorKind::Timeout => {
                    println!("unit {unit}: timed out ({e})")
                }
                Err(other) => println!("unit {unit}: {other:?}"),
            }
        }
        master
            .write_single_register(1, 3, 100 + u16::from(round as u8))
            .await?;
    }

    println!("-- exceptions");
    match master.read_holding_registers(1, 60, 10).await {
        Err(DeviceError::IllegalAddress) => println!("unit 1: registers 60..70 do not exist"),
        other => println!("unexpected: {other:?}"),
    }
    match master.read_coils(1, 0, 8).await {
        Err(DeviceError::IllegalFunction) => println!("unit 1: has no coils (fc01 unsupported)"),
        other => println!("unexpected: {other:?}"),
    }
    match master.write_single_register(2, 0, 0xFFFF).await {
        Err(DeviceError::IllegalValue) => println!("unit 2: 0xFFFF refused"),
        other => println!("unexpected: {other:?}"),
    }

    let m = client.metrics();
    println!(
        "-- {} calls, {} answered with an exception, p99 {:?}",
        m.calls,
        m.errors.get(ErrorKind::Remote),
        m.latency.p99
    );
    client.close().await;
    server.shutdown(Duration::from_secs(1)).await?;
    Ok(())
}

/// The simulated side: a gateway in front of three devices.
#[derive(Clone)]
struct Gateway {
    devices: Arc<Mutex<HashMap<u8, Device>>>,
}

struct Device {
    registers: [u16; 16],
    /// Busy every other poll (a slow PLC).
    busy_toggle: bool,
    online: bool,
}

impl Gateway {
    fn new() -> Self {
        let mut devices = HashMap::new();
        devices.insert(
            1,
            Device {
                registers: [0; 16],
                busy_toggle: false,
                online: true,
            },
        );
        devices.insert(
            2,
            Device {
                registers: [0; 16],
                busy_toggle: true,
                online: true,
            },
        );
        devices.insert(
            3,
            Device {
                registers: [0; 16],
                busy_toggle: false,
                online: false,
            },
        );
        for (unit, device) in devices.iter_mut() {
            for (i, r) in device.registers.iter_mut().enumerate() {
                *r = u16::from(*unit) * 100 + i as u16;
            }
        }
        Self {
            devices: Arc::new(Mutex::new(devices)),
        }
    }

    fn exception(code: u16, what: &str) -> Status {
        Status::application(EXCEPTION_BASE + code, what)
    }

    fn read(&self, req: &ReadRegisters) -> Result<Vec<u16>, Status> {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let device = u8::try_from(req.unit)
            .ok()
            .and_then(|unit| devices.get_mut(&unit))
            .ok_or_else(|| Self::exception(exception::GATEWAY_NO_RESPONSE, "no such unit"))?;
        if !device.online {
            return Err(Self::exception(
                exception::GATEWAY_NO_RESPONSE,
                "device offline",
            ));
        }
        if device.busy_toggle {
            device.busy_toggle = false;
            return Err(Self::exception(exception::DEVICE_BUSY, "device busy"));
        }
        let start = usize::try_from(req.start).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(req.count).unwrap_or(usize::MAX));
        let values = device
            .registers
            .get(start..end)
            .ok_or_else(|| Self::exception(exception::ILLEGAL_DATA_ADDRESS, "no such registers"))?
            .to_vec();
        // A live process: the first register drifts between polls.
        device.registers[0] = device.registers[0].wrapping_add(1);
        Ok(values)
    }

    fn write(&self, req: WriteRegister) -> Result<WriteRegister, Status> {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let device = u8::try_from(req.unit)
            .ok()
            .and_then(|unit| devices.get_mut(&unit))
            .filter(|d| d.online)
            .ok_or_else(|| Self::exception(exception::GATEWAY_NO_RESPONSE, "device offline"))?;
        // 0xFFFF is refused by these devices; a register holds 16 bits.
        let value = u16::try_from(req.value)
            .ok()
            .filter(|v| *v != 0xFFFF)
            .ok_or_else(|| Self::exception(exception::ILLEGAL_DATA_VALUE, "value out of range"))?;
        let slot = usize::try_from(req.address)
            .ok()
            .and_then(|address| device.registers.get_mut(address))
            .ok_or_else(|| Self::exception(exception::ILLEGAL_DATA_ADDRESS, "no such register"))?;
        *slot = value;
        Ok(req)
    }

    async fn serve(&self) -> Result<mcp_server::ServerHandle, mcp_server::Error> {
        Server::builder()
            .router(device_gateway_server::mount(Router::new(), self.clone()))
            .bind("127.0.0.1:0")
            .await
    }
}

/// The service as `device.proto` declares it.
impl DeviceGateway for Gateway {
    async fn read_holding_registers(
        &self,
        _ctx: RequestContext,
        req: ReadRegisters,
    ) -> Result<Registers, Status> {
        let values = self.read(&req)?;
        Ok(Registers {
            values: values.into_iter().map(u32::from).collect(),
        })
    }

    async fn read_coils(&self, _ctx: RequestContext, _req: ReadRegisters) -> Result<Coils, Status> {
        // These devices have none.
        Err(Gateway::exception(exception::ILLEGAL_FUNCTION, "no coils"))
    }

    async fn write_single_register(
        &self,
        _ctx: RequestContext,
        req: WriteRegister,
    ) -> Result<WriteRegister, Status> {
        self.write(req)
    }
}
